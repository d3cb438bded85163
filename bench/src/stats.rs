//! Small statistics over benchmark samples.

/// The median (upper median for an even count); `v` is sorted in place.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nearest-rank percentile `p` (0..=1) of sorted samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The smallest and the largest of `v` (infinite, the wrong way round, when it is empty).
pub fn min_max(v: impl IntoIterator<Item = f64>) -> (f64, f64) {
    v.into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// The median of `v`, its smallest and its largest.
pub fn median_min_max(v: &[f64]) -> [f64; 3] {
    let (min, max) = min_max(v.iter().copied());
    [median(&mut v.to_vec()), min, max]
}

/// `min-max` with `digits` decimals.
pub fn spread(v: &[f64], digits: usize) -> String {
    let (min, max) = min_max(v.iter().copied());
    format!("{min:.digits$}-{max:.digits$}")
}

/// Per-repetition ratios of `v` to `base` (the two measured back to back in each
/// repetition): their median, and their `min-max` with `digits` decimals.
pub fn ratio(v: &[f64], base: &[f64], digits: usize) -> (f64, String) {
    let mut r: Vec<f64> = v.iter().zip(base).map(|(a, b)| a / b).collect();
    if r.is_empty() {
        return (f64::NAN, "-".into());
    }
    let sp = spread(&r, digits);
    (median(&mut r), sp)
}

/// CPU time so far, in seconds: busy (this machine's own work, softirq included), stolen (the
/// hypervisor ran someone else while this machine wanted to run) and in all.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy: f64,
    pub steal: f64,
    pub total: f64,
}

impl std::ops::Sub for CpuTimes {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            busy: self.busy - o.busy,
            steal: self.steal - o.steal,
            total: self.total - o.total,
        }
    }
}

/// CPU times from the /proc/stat line that starts with `label` (`cpu`: the whole machine;
/// `cpu0`: one CPU).
fn stat_seconds(label: &str) -> CpuTimes {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let f = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    let total: f64 = fields.iter().take(8).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    CpuTimes {
        busy: (total - f(3) - f(4) - f(7)) / hz,
        steal: f(7) / hz,
        total: total / hz,
    }
}

/// CPU times of the whole machine so far.
pub fn cpu_seconds() -> CpuTimes {
    stat_seconds("cpu")
}

/// Busy time of CPU `cpu` so far, in seconds (everything but idle, iowait and steal).
pub fn cpu_busy_seconds(cpu: usize) -> f64 {
    stat_seconds(&format!("cpu{cpu}")).busy
}

/// A process's CPU time so far (user and system), seconds; 0 if it cannot be read.
pub fn process_cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) if hz > 0.0 => (u + s) / hz,
        _ => 0.0,
    }
}

/// The order modes `0..modes` run in, for each of `reps` repetitions: a new random order each
/// time, from a fixed seed (runs are comparable). A fixed or rotated order keeps each mode
/// behind the same predecessor, which alone skewed ratios by up to 9%.
pub fn shuffled_orders(reps: usize, modes: usize, seed: u64) -> Vec<Vec<usize>> {
    use rand::{rngs::StdRng, seq::SliceRandom as _, SeedableRng as _};
    let mut rng = StdRng::seed_from_u64(seed);
    (0..reps)
        .map(|_| {
            let mut order: Vec<usize> = (0..modes).collect();
            order.shuffle(&mut rng);
            order
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_median() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(pct(&s, 0.0), 1.0);
        assert_eq!(pct(&s, 0.5), 3.0);
        assert_eq!(pct(&s, 1.0), 5.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(spread(&[2.0, 1.25, 3.0], 1), "1.2-3.0");
        let (m, sp) = ratio(&[2.0, 9.0, 3.0], &[1.0, 10.0, 2.0], 2);
        assert_eq!((m, sp.as_str()), (1.5, "0.90-2.00"));
    }

    #[test]
    fn cpu_seconds_grow() {
        let t = cpu_seconds();
        assert!(t.total > 0.0 && t.busy + t.steal <= t.total, "{t:?}");
    }
}
