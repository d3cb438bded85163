//! The kernel matrix's table: which test shows what, of which datapath, from which kernel on.

/// One test of the matrix.
pub struct Row {
    /// What it shows, for the report.
    pub what: &'static str,
    /// The datapath it exercises.
    pub datapath: &'static str,
    /// Its test binary (a file of `tests/tests/`).
    pub binary: &'static str,
    /// Its name.
    pub test: &'static str,
    /// The oldest kernel it can run on, when that is newer than the project's minimum (5.10).
    /// The socket datapath needs 5.18 (`loader::check_sock_kernel`); on older kernels the
    /// matrix runs the test that shows it is refused with that version instead.
    pub needs: Option<(u32, u32)>,
}

const SOCK: Option<(u32, u32)> = Some((5, 18));

pub const ROWS: &[Row] = &[
    Row {
        what: "fixture table (BPF_PROG_TEST_RUN), every TC and sock program",
        datapath: "tc",
        binary: "datapath",
        test: "programs_handle_the_fixture_table",
        needs: None,
    },
    Row {
        what: "fixture table (BPF_PROG_TEST_RUN)",
        datapath: "xdp",
        binary: "datapath",
        test: "the_xdp_program_handles_the_fixture_table",
        needs: None,
    },
    Row {
        what: "monitor: flow events only while one listens, a full ring's losses counted",
        datapath: "tc",
        binary: "datapath",
        test:
            "flow_events_are_written_only_while_a_monitor_listens_and_a_full_ring_counts_its_losses",
        needs: None,
    },
    Row {
        what: "IPv6 both ways, checksums (BPF_PROG_TEST_RUN)",
        datapath: "tc",
        binary: "datapath",
        test: "ipv6_packets_are_translated_both_ways_with_valid_checksums",
        needs: None,
    },
    Row {
        what: "TCP and UDP through a frontend, reverse NAT",
        datapath: "tc",
        binary: "netns",
        test: "tcp_and_udp_spread_over_backends_with_valid_checksums_and_exact_counters",
        needs: None,
    },
    Row {
        what: "clsact attachment",
        datapath: "tc",
        binary: "netns",
        test: "clsact_attachment_forwards_like_tcx",
        needs: None,
    },
    Row {
        what: "IPv6 TCP and UDP through a frontend",
        datapath: "tc",
        binary: "netns",
        test: "ipv6_tcp_and_udp_spread_over_backends_with_valid_checksums",
        needs: None,
    },
    Row {
        what: "failover: a backend's process died",
        datapath: "tc",
        binary: "failover",
        test: "a_backend_whose_process_died_is_left_with_no_failed_connection",
        needs: None,
    },
    Row {
        what: "conntrack: a new connection on an answered one's tuple, its backend dead",
        datapath: "tc",
        binary: "conntrack",
        test:
            "a_new_connection_on_the_tuple_of_an_answered_one_is_failed_over_from_its_dead_backend",
        needs: None,
    },
    Row {
        what: "failover: ICMPv6 unreachable",
        datapath: "tc",
        binary: "failover",
        test: "an_ipv6_backend_answering_icmpv6_unreachable_is_left_with_no_failed_connection",
        needs: None,
    },
    Row {
        what: "TCP and UDP forwarded before the stack",
        datapath: "xdp",
        binary: "xdp",
        test: "xdp_gateway_translates_and_forwards_tcp_and_udp_before_the_stack",
        needs: None,
    },
    Row {
        what: "IPv6 forwarded before the stack",
        datapath: "xdp",
        binary: "xdp",
        test: "xdp_gateway_forwards_ipv6_before_the_stack",
        needs: None,
    },
    Row {
        what: "refused with the version it needs, or starts",
        datapath: "sock",
        binary: "sock",
        test: "sock_is_refused_by_version_where_the_kernel_lacks_its_hooks",
        needs: None,
    },
    Row {
        what: "real clients (curl, redis-cli), TCP and UDP, weights",
        datapath: "sock",
        binary: "sock",
        test: "sock_real_clients_reach_frontends_see_the_vip_and_weights_spread",
        needs: SOCK,
    },
    Row {
        what: "IPv6 sockets, IPv4-mapped addresses",
        datapath: "sock",
        binary: "sock",
        test: "sock_ipv6_sockets_and_ipv4_mapped_addresses_are_translated",
        needs: SOCK,
    },
    Row {
        what: "failover: a backend TC found dead",
        datapath: "sock",
        binary: "failover",
        test: "the_sock_datapath_avoids_a_backend_tc_found_dead",
        needs: SOCK,
    },
];

/// `5.10.0-32-amd64` -> (5, 10).
pub fn version(kernel: &str) -> Option<(u32, u32)> {
    let mut parts = kernel.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn runs_on(row: &Row, kernel: &str) -> bool {
    match (row.needs, version(kernel)) {
        (None, _) => true,
        (Some(needs), Some(v)) => v >= needs,
        (Some(_), None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_debian_kernel_names() {
        assert_eq!(version("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(version("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(version("amd64"), None);
    }
    /// A renamed test would only show as "did not run" after minutes of VMs: caught here.
    #[test]
    fn every_row_names_a_test_of_its_binary() {
        for row in ROWS {
            let file = crate::root().join(format!("tests/tests/{}.rs", row.binary));
            let source = std::fs::read_to_string(&file).unwrap();
            assert!(
                source.contains(&format!("fn {}()", row.test)),
                "{} has no test {}",
                file.display(),
                row.test
            );
        }
    }
    #[test]
    fn the_socket_rows_run_only_where_the_kernel_has_its_hooks() {
        let sock_rows = |k: &str| {
            ROWS.iter()
                .filter(|r| r.datapath == "sock" && runs_on(r, k))
                .count()
        };
        assert_eq!(sock_rows("5.10.0-32-amd64"), 1, "only the refusal");
        assert_eq!(sock_rows("6.1.0-50-amd64"), 4);
        assert!(ROWS.iter().all(|r| runs_on(r, "6.12.95+deb12-amd64")));
    }
}
