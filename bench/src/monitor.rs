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

use crate::{
    stats::shuffled_orders,
    table::{self, render, Col},
    verdict::{self, Better, Goal},
};

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

    let mut modes = Vec::new();
    for (p, (what, _)) in packets.iter().enumerate() {
        for (m, mode) in Mode::ALL.iter().enumerate() {
            modes.push(serde_json::json!({
                "mode": format!("{what}: {}", mode.name()), "ns_per_run": ns[p][m],
            }));
        }
    }
    let json = serde_json::json!({
        "reps": reps, "batches": batches, "batch": BATCH, "order": "random per repetition",
        "packets": packets.map(|(what, _)| what), "modes": modes,
        "events_lost": lost, "events_read": read, "events_owed": owed,
    });
    Ok((table(&json)?, json))
}

/// The goal: a packet that makes no event costs the same with a monitor connected.
pub const GOALS: [Goal; 1] = [Goal::new(
    "a packet without an event, a monitor connected (ns per run)",
    (
        "established flow (no event): on, ring drained",
        "established flow (no event): off (no monitor)",
    ),
    "ns_per_run",
    Better::Lower,
    1.02,
)
.control(
    "established flow (no event): off (again)",
    "established flow (no event): off (no monitor)",
)
.baseline("no monitor")];

/// The settings, one table per packet and the goal, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let s = table::Samples::new(&json["modes"])?;
    let mut md = format!(
        "{} repetitions x {} calls x {} runs per mode, the modes in a random order each repetition; ratios are medians of per-repetition ratios to `off`, with min-max. Events read in `on, ring drained` from the dropped packet: {} of {}; counted lost (mostly in `on, ring full`): {}.\n",
        json["reps"], json["batches"], json["batch"], json["events_read"], json["events_owed"], json["events_lost"],
    );
    for packet in json["packets"].as_array().context("packets")? {
        let packet = packet.as_str().context("a packet's name")?;
        let _ = writeln!(md, "\n{packet}:\n");
        md += &render(
            &s.subset(&format!("{packet}: ")),
            "mode",
            &[
                ("ns per run", Col::Spread("ns_per_run", 1)),
                ("vs off", Col::Ratio("ns_per_run", Mode::Off.name())),
            ],
        )?;
    }
    md += "\nGoal:\n\n";
    md += &verdict::list(&s, &GOALS)?;
    Ok(md)
}
