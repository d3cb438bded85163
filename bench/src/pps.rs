//! Packet rate through a gateway: small UDP frames from an AF_PACKET socket in the client
//! namespace (batches of 64 with `sendmmsg`, straight to the device), through the forwarding
//! namespace (the gateway), to a sink in the backend namespace that drops them at its first
//! netfilter hook. Not trafgen: native XDP on a veth gives its peer NAPI, whose full ring
//! answers a transmit with "busy", and trafgen's TX ring takes that (EAGAIN) as fatal and
//! stops after a few thousand frames; this sender retries instead. Modes: `routing` (no
//! translation: the frames are addressed to the backend; the limit), `routing (again)` (the
//! run's resolution), `iptables` (a DNAT rule), `ambassador-tc`, `ambassador-xdp`, and
//! `routing, amb_xdp attached` (frames to the backend through the XDP program, which passes
//! them to the stack: what XDP on a veth costs before our program does anything), in a random
//! order in each repetition.
//!
//! Where the work runs: every veth receives in NAPI (GRO on), and NAPI runs in threads
//! (`threaded`), so the gateway's receive side is one kernel thread, pinned to CPU 0 with
//! nothing else there; the sender, and the sink's receive thread, are on CPU 1. The gateway's
//! CPU per frame is that thread's CPU time over the frames the sink received.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use ambassador_tests::{Daemon, NetNs, PinDir, TempFile, Topology};
use anyhow::{bail, Context as _, Result};

use crate::{
    datapath::{prog_ns_per_run, BpfStats},
    stats::shuffled_orders,
    table::{self, render, Col},
    verdict::{self, Better, Goal},
};

const VIP: &str = "10.96.0.10";
const BACKEND: &str = "10.200.1.2";
const PORT: u16 = 9;
/// CPU the gateway's receive thread runs on, and CPU for everything else.
const GATEWAY_CPU: &str = "0";
const OTHER_CPU: &str = "1";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Routing,
    RoutingAgain,
    Iptables,
    Tc,
    Xdp,
    XdpPass,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Routing,
        Mode::RoutingAgain,
        Mode::Iptables,
        Mode::Tc,
        Mode::Xdp,
        Mode::XdpPass,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Routing => "routing",
            Mode::RoutingAgain => "routing (again)",
            Mode::Iptables => "iptables DNAT",
            Mode::Tc => "ambassador-tc",
            Mode::Xdp => "ambassador-xdp",
            Mode::XdpPass => "routing, amb_xdp attached",
        }
    }

    /// The program that runs once per frame on the gateway, if any of ours.
    fn program(self) -> Option<&'static str> {
        match self {
            Mode::Tc => Some(ambassador_common::program_names::TC_DNAT),
            Mode::Xdp | Mode::XdpPass => Some(ambassador_common::program_names::XDP),
            _ => None,
        }
    }

    /// Where the frames are addressed.
    fn dst(self) -> &'static str {
        match self {
            Mode::Routing | Mode::RoutingAgain | Mode::XdpPass => BACKEND,
            _ => VIP,
        }
    }
}

/// What is active for one mode; undone on drop.
#[allow(dead_code, reason = "the values are held for their Drop")]
enum Active {
    None,
    Daemon(Daemon, PinDir),
    Iptables(String),
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Active::Iptables(ns) = self {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "iptables", "-w", "-t", "nat", "-F"])
                .status();
        }
    }
}

fn mac(ns: &NetNs, dev: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let text = v[0]["address"].as_str().context("a MAC address")?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// The frames: UDP 10.200.0.2 -> `dst`:9 with 18 bytes of payload (60-byte frames), from 256
/// source ports (256 flows).
fn frames(dst_mac: [u8; 6], src_mac: [u8; 6], dst: &str) -> Result<Vec<Vec<u8>>> {
    let dst: std::net::Ipv4Addr = dst.parse()?;
    (0..256u16)
        .map(|i| {
            let mut v = Vec::with_capacity(60);
            etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
                .ipv4([10, 200, 0, 2], dst.octets(), 64)
                .udp(40_000 + i, PORT)
                .write(&mut v, &[0x61; 18])?;
            Ok(v)
        })
        .collect()
}

/// Sends `frames` round robin on `dev` (this thread's network namespace) from CPU `cpu` for
/// `secs`, in batches of 64 straight to the device (`PACKET_QDISC_BYPASS`), retrying whatever
/// the device refuses; returns how many it took.
fn blast(dev: &str, frames: &[Vec<u8>], cpu: usize, secs: u64) -> std::io::Result<u64> {
    use std::io::Error;
    const BATCH: usize = 64;
    // SAFETY: plain system calls on a socket this function owns and closes; every pointer
    // handed to the kernel points into `frames`, `iov` or `msgs`, which outlive the calls.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(Error::last_os_error());
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        let close = |e| {
            libc::close(fd);
            Err(e)
        };
        let name = std::ffi::CString::new(dev).map_err(Error::other)?;
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return close(Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let mut iov: Vec<libc::iovec> = (0..BATCH)
            .map(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| std::mem::zeroed()).collect();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (mut sent, mut next) = (0u64, 0usize);
        while Instant::now() < deadline {
            for i in 0..BATCH {
                let f = &frames[(next + i) % frames.len()];
                iov[i].iov_base = f.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = f.len();
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0);
            if n > 0 {
                sent += n as u64;
                next = (next + n as usize) % frames.len();
            } else {
                // The device is busy (its peer's ring is full): try again.
                std::hint::spin_loop();
            }
        }
        libc::close(fd);
        Ok(sent)
    }
}

/// The kernel thread that runs NAPI for `dev` (threaded NAPI names it `napi/<dev>-<id>`).
fn napi_thread(dev: &str) -> Result<u32> {
    let prefix = format!("napi/{dev}-");
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with(&prefix) {
            return Ok(pid);
        }
    }
    bail!("no {prefix}* thread: threaded NAPI is off")
}

/// CPU time of thread `pid` in seconds (user + system).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a stat line")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: a plain sysconf query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Frames received on `dev` in `ns`.
fn rx_packets(ns: &NetNs, dev: &str) -> Result<u64> {
    Ok(crate::datapath::packet_counts(ns, dev)?[0])
}

/// NAPI in a thread for `dev` in `ns`, pinned to `cpu`; the thread. Done again for each mode:
/// attaching or detaching XDP may give the device a new NAPI thread.
fn threaded_napi(ns: &NetNs, dev: &str, cpu: &str) -> Result<u32> {
    ns.exec(&["ethtool", "-K", dev, "gro", "on"]);
    ns.exec(&[
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{dev}/threaded"),
    ]);
    let pid = napi_thread(dev)?;
    let ok = Command::new("taskset")
        .args(["-p", "-c", cpu, &pid.to_string()])
        .output()?
        .status
        .success();
    if !ok {
        bail!("pinning napi/{dev} to CPU {cpu} failed");
    }
    Ok(pid)
}

#[derive(Default)]
struct Samples {
    mpps: Vec<f64>,
    cpu_per_m: Vec<f64>,
    /// Share of the gateway thread's time it was running.
    busy: Vec<f64>,
    /// Our program's run time per frame (ns), where one runs.
    prog_ns: Vec<f64>,
}

pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, secs) = if quick { (1, 1) } else { (5, 3) };
    let _stats = BpfStats::enable();
    let topo = Topology::new(1);
    let sink = &topo.backends[0];
    // The sink drops the frames at its first hook (no socket, no ICMP back).
    sink.exec(&[
        "iptables",
        "-w",
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-p",
        "udp",
        "--dport",
        "9",
        "-j",
        "DROP",
    ]);
    // The gateway's neighbour entry for the sink, before the first frame: nothing answers
    // back to resolve it, and XDP's FIB lookup needs a resolved neighbour.
    let sink_mac = mac(sink, "eth0")?.map(|b| format!("{b:02x}")).join(":");
    topo.fwd.ip(&[
        "neigh",
        "replace",
        BACKEND,
        "lladdr",
        &sink_mac,
        "dev",
        "b1",
        "nud",
        "permanent",
    ]);
    let pps_cfg = TempFile::new(&format!(
        "[[service]]\nname = \"sink\"\nfrontend = \"{VIP}:{PORT}\"\nproto = \"udp\"\nendpoints = [\"{BACKEND}:{PORT}\"]\n"
    ));
    let (dst_mac, src_mac) = (mac(&topo.fwd, "c0")?, mac(&topo.client, "eth0")?);

    let mut results: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
    for (rep, order) in shuffled_orders(reps, Mode::ALL.len(), 0x7070_7321)
        .into_iter()
        .enumerate()
    {
        for i in order {
            let mode = Mode::ALL[i];
            println!("  rep {}/{reps}: {}", rep + 1, mode.name());
            let _active = activate(&topo, mode, &pps_cfg)?;
            let gateway = threaded_napi(&topo.fwd, "c0", GATEWAY_CPU)?;
            threaded_napi(sink, "eth0", OTHER_CPU)?;
            let batch = frames(dst_mac, src_mac, mode.dst())?;
            let (rx0, cpu0) = (rx_packets(sink, "eth0")?, cpu_seconds(gateway)?);
            let t0 = Instant::now();
            let offered = topo
                .client
                .run(move || blast("eth0", &batch, OTHER_CPU.parse().unwrap_or(1), secs))?;
            let (rx1, cpu1, elapsed) = (
                rx_packets(sink, "eth0")?,
                cpu_seconds(gateway)?,
                t0.elapsed(),
            );
            let frames = rx1.saturating_sub(rx0);
            if frames == 0 {
                bail!("{}: none of {offered} frames reached the sink", mode.name());
            }
            let r = &mut results[i];
            r.mpps.push(frames as f64 / elapsed.as_secs_f64() / 1e6);
            r.cpu_per_m.push((cpu1 - cpu0) / (frames as f64 / 1e6));
            r.busy.push((cpu1 - cpu0) / elapsed.as_secs_f64());
            if let Some((_, ns)) = mode.program().and_then(prog_ns_per_run) {
                r.prog_ns.push(ns);
            }
            // Let the queues drain before the next mode.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    let modes: Vec<_> = Mode::ALL
        .iter()
        .zip(&results)
        .map(|(mode, r)| {
            serde_json::json!({"mode": mode.name(), "mpps": r.mpps, "cpu_us_per_frame": r.cpu_per_m, "busy": r.busy, "program_ns_per_frame": r.prog_ns})
        })
        .collect();
    let json = serde_json::json!({
        "reps": reps, "seconds": secs, "order": "random per repetition", "modes": modes,
    });
    Ok((table(&json)?, json))
}

/// The XDP datapath's goals, with `routing (again)` as the control.
pub const GOALS: [Goal; 2] = [
    Goal::new(
        "ambassador-xdp packet rate",
        ("ambassador-xdp", "ambassador-tc"),
        "mpps",
        Better::Higher,
        2.0,
    )
    .control("routing (again)", "routing"),
    Goal::new(
        "ambassador-xdp packet rate",
        ("ambassador-xdp", "routing"),
        "mpps",
        Better::Higher,
        1.0,
    )
    .control("routing (again)", "routing"),
];

/// The settings, the table and the goals, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let s = table::Samples::new(&json["modes"])?;
    let mut md = format!(
        "60-byte UDP frames (256 flows) from an AF_PACKET socket (sendmmsg, qdisc bypassed) in the client namespace, through the gateway namespace, to a sink namespace that drops them; {} repetitions of {} s, the modes in a random order in each (`routing, amb_xdp attached`: frames to the backend through the XDP program, which passes them to the stack). The gateway's receive work is one threaded-NAPI kernel thread pinned to CPU 0 (nothing else there); the sender and the sink are on CPU 1. Forwarded: frames the sink received per second. CPU: the gateway thread's CPU time per forwarded frame, and the share of the run it was busy (below 100%, the sender, not the gateway, set the rate); one core's capacity: the rate the gateway's core would forward fully busy (1 / CPU per frame). Program: our program's own run time per frame (kernel.bpf_stats_enabled). Ratios are medians of per-repetition ratios to `routing`, with min-max.\n\n",
        json["reps"], json["seconds"],
    );
    md += &render(
        &s,
        "mode",
        &[
            ("Mpps", Col::Spread("mpps", 3)),
            ("Mpps / routing", Col::Ratio("mpps", "routing")),
            (
                "gateway CPU µs per frame",
                Col::Median("cpu_us_per_frame", 2),
            ),
            ("CPU / routing", Col::Ratio("cpu_us_per_frame", "routing")),
            (
                "one core's capacity, Mpps",
                Col::Inverse("cpu_us_per_frame", 3),
            ),
            ("gateway thread busy", Col::Percent("busy")),
            (
                "program ns per frame",
                Col::Median("program_ns_per_frame", 0),
            ),
        ],
    )?;
    md += "\nGoals:\n\n";
    md += &verdict::list(&s, &GOALS)?;
    Ok(md)
}

/// Sets up `mode` on the gateway.
fn activate(topo: &Topology, mode: Mode, cfg: &TempFile) -> Result<Active> {
    let run = |datapath: &str| -> Result<Active> {
        let pin = PinDir::new();
        let mut d = Daemon::start(
            &topo.fwd,
            &[
                "run",
                "--datapath",
                datapath,
                "--iface",
                "c0",
                "--config",
                cfg.as_str(),
                "--pin-path",
                pin.path.to_str().context("UTF-8 pin path")?,
            ],
        );
        d.wait_ready();
        // The first frames create the flows; give XDP's backend side a moment to attach.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Active::Daemon(d, pin))
    };
    Ok(match mode {
        Mode::Routing | Mode::RoutingAgain => Active::None,
        Mode::Iptables => {
            topo.fwd.exec(&[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                VIP,
                "-p",
                "udp",
                "--dport",
                &PORT.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{BACKEND}:{PORT}"),
            ]);
            Active::Iptables(topo.fwd.name.clone())
        }
        Mode::Tc => run("tc")?,
        Mode::Xdp | Mode::XdpPass => run("xdp")?,
    })
}
