//! What `ambassador monitor` costs the datapath per packet. The `tc` DNAT program is run by the
//! kernel itself (BPF_PROG_TEST_RUN, repeated; the kernel's own time per run, so no wall clock
//! and no scheduler noise) on two packets:
//!
//! - a packet of an established flow: no event site on its path (events are per new flow,
//!   failover and drop), so only the switch's presence could cost;
//! - a SYN to a frontend with no backend: dropped, one `drop` event per packet, the most a
//!   packet can cost.
//!
//! Each in four modes, in a new random order each repetition: the switch `off`, `off (again)`
//! (the control: its ratio to `off` is the run's resolution), `on` with the ring drained
//! between batches (every event written), and `on, ring full` (nobody reads: every event is
//! counted lost). Ratios to `off` are medians of per-repetition ratios.

use std::{fmt::Write as _, time::Duration};

use ambassador_common::{map_names, program_names};
use ambassador_tests::{PinDir, FIXTURE_CONFIG};
use ambassador_user::{
    core::{config, tables},
    datapath::loader,
};
use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use etherparse::PacketBuilder;

use crate::stats::{median, ratio, shuffled_orders, spread};

/// Runs per BPF_PROG_TEST_RUN call: fewer than the ring holds (256 KiB, 96 bytes an event), so
/// `on` writes every event when the ring is drained between calls.
const BATCH: u32 = 2000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    OffAgain,
    On,
    OnFull,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Off, Mode::OffAgain, Mode::On, Mode::OnFull];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off (no monitor)",
            Mode::OffAgain => "off (again)",
            Mode::On => "on, ring drained",
            Mode::OnFull => "on, ring full",
        }
    }
}

fn tcp(dst: [u8; 4], syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 2], dst, 64)
        .tcp(40000, 80, 1000, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, b"x").expect("a packet");
    v
}

/// Every event in the ring, read and dropped.
fn drain(ring: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

/// Mean ns per run of `prog` on `input` over `batches` calls of [`BATCH`] runs, draining
/// `ring` between calls when asked; with the events drained.
fn ns_per_run(
    prog: &SchedClassifier,
    input: &[u8],
    batches: usize,
    ring: Option<&mut RingBuf<MapData>>,
) -> Result<(f64, usize)> {
    let mut out = vec![0u8; 256];
    let mut total = Duration::ZERO;
    let mut ring = ring;
    let mut drained = 0;
    for _ in 0..batches {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat: BATCH,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        // The kernel reports the mean time of one run.
        total += r.duration;
        if let Some(ring) = ring.as_deref_mut() {
            drained += drain(ring);
        }
    }
    Ok((total.as_nanos() as f64 / batches as f64, drained))
}

/// The table and its JSON.
pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, batches) = if quick { (3, 20) } else { (15, 100) };
    let pin = PinDir::new();
    let (mut ebpf, mut maps, _lock, _) =
        loader::load(&pin.path, Default::default(), false, false, false)?;
    let desired = config::parse("fixture.toml", FIXTURE_CONFIG)?;
    let mut installed = maps.read_installed()?;
    tables::converge(&mut maps, &mut installed, &desired)?;
    let mut ring = RingBuf::try_from(
        ebpf.take_map(map_names::EVENTS)
            .context("the object has no event ring")?,
    )?;
    let prog: &SchedClassifier = ebpf
        .program(program_names::TC_DNAT)
        .context("no DNAT program")?
        .try_into()?;

    // The flow the established packets belong to.
    ns_per_run(prog, &tcp([10, 96, 0, 10], true), 1, None)?;
    let packets = [
        ("established flow (no event)", tcp([10, 96, 0, 10], false)),
        (
            "dropped, no backend (a drop event each)",
            tcp([10, 96, 0, 11], true),
        ),
    ];
    let orders = shuffled_orders(reps, Mode::ALL.len(), 29);
    // [packet][mode][rep]
    let mut ns = vec![vec![Vec::new(); Mode::ALL.len()]; packets.len()];
    let lost_before = maps.events_lost()?;
    // Events `on` wrote and read, against the runs that had to write one.
    let (mut read, mut owed) = (0, 0);
    for order in &orders {
        for (p, (_, input)) in packets.iter().enumerate() {
            for &m in order {
                let mode = Mode::ALL[m];
                maps.set_monitor(matches!(mode, Mode::On | Mode::OnFull))?;
                drain(&mut ring);
                let (r, drained) = match mode {
                    Mode::On => ns_per_run(prog, input, batches, Some(&mut ring))?,
                    _ => ns_per_run(prog, input, batches, None)?,
                };
                if mode == Mode::On && p == 1 {
                    read += drained;
                    owed += batches * BATCH as usize;
                }
                ns[p][m].push(r);
            }
        }
    }
    maps.set_monitor(false)?;
    let lost = maps.events_lost()? - lost_before;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "## The monitor's cost per packet (`tc` DNAT program, kernel-timed, {reps} repetitions x {batches} x {BATCH} runs)\n"
    );
    let _ = writeln!(
        md,
        "| packet | mode | ns per run (median) | spread | vs off (median of per-rep ratios) | ratio spread |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (p, (what, _)) in packets.iter().enumerate() {
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let v = &ns[p][m];
            let (r, rs) = ratio(v, &ns[p][0], 3);
            let med = median(&mut v.clone());
            let _ = writeln!(
                md,
                "| {what} | {} | {med:.1} | {} | {r:.3}x | {rs} |",
                mode.name(),
                spread(v, 1)
            );
            rows.push(serde_json::json!({
                "packet": what, "mode": mode.name(), "ns_per_run": v,
                "median_ns": med, "ratio_to_off": r, "ratio_spread": rs,
            }));
        }
    }
    let (control, control_spread) = ratio(&ns[1][1], &ns[1][0], 3);
    let _ = writeln!(
        md,
        "\nResolution of this run: `off (again)` against `off` on the dropped packet is {control:.3}x (per repetition {control_spread}); a difference inside that spread is not resolved. Events counted lost (the `ring full` mode): {lost}; events read in `on` from the dropped packet: {read} of {owed}."
    );
    let json = serde_json::json!({
        "reps": reps, "batches": batches, "batch": BATCH, "rows": rows,
        "events_lost": lost, "events_read": read, "events_owed": owed, "control_ratio": control,
    });
    Ok((md, json))
}
