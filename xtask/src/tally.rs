//! The closing `total:` line of `cargo xtask test`: libtest's counts over every test binary,
//! with the tests that recorded a skip (`ambassador_tests::skip`) moved from passed to skipped
//! (libtest has no verdict for a test that finds at run time that it cannot run here).

/// Counts over every `test result:` line of one `cargo test` run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// The totals reported.
#[derive(Debug, PartialEq, Eq)]
pub struct Totals {
    /// Ran and passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
    /// Did not run: recorded skips and `#[ignore]`d tests.
    pub skipped: u64,
}

impl Tally {
    /// Takes one line of `cargo test`'s output.
    pub fn line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |word: &str| -> u64 {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(word)?
                        .split_whitespace()
                        .last()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
        self.ignored += count(" ignored");
    }

    /// Counts one test that is not a libtest test (the move between VMs).
    pub fn record(&mut self, passed: bool) {
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// The totals, given how many tests recorded a skip (each returned early, so libtest
    /// counted it as passed).
    pub fn totals(&self, recorded_skips: usize) -> Totals {
        let recorded = recorded_skips as u64;
        Totals {
            passed: self.passed.saturating_sub(recorded),
            failed: self.failed,
            skipped: recorded + self.ignored,
        }
    }
}

/// The skips recorded in the skip log: (test, reason), one `test<TAB>reason` line each.
pub fn recorded_skips(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, r)| (t.to_owned(), r.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_count_as_skipped_not_passed() {
        let mut t = Tally::default();
        for line in [
            "running 3 tests",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
        ] {
            t.line(line);
        }
        let skips = recorded_skips("a\tneeds root\nb\tneeds root\n");
        assert_eq!(skips.len(), 2);
        assert_eq!(
            t.totals(skips.len()),
            Totals {
                passed: 2,
                failed: 2,
                skipped: 3
            }
        );
    }
}
