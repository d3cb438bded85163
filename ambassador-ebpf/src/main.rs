//! ambassador's TC datapath: DNAT of frontend traffic to a backend on a client-facing
//! interface's ingress, and the reverse rewrite of replies on its egress.
#![no_std]
#![no_main]

mod conntrack;
mod lb;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// Leave the packet to the next program or the stack (TC_ACT_UNSPEC; TCX_NEXT under TCX).
const TC_ACT_NEXT: i32 = -1;
/// Drop the packet.
const TC_ACT_SHOT: i32 = aya_ebpf::bindings::TC_ACT_SHOT as i32;

/// Ingress of a client-facing interface: a packet to a frontend goes to a backend.
#[classifier]
pub fn amb_tc_dnat(ctx: TcContext) -> i32 {
    verdict(nat::dnat(&ctx))
}

/// Egress of a client-facing interface: a backend's reply appears to come from the frontend.
#[classifier]
pub fn amb_tc_rnat(ctx: TcContext) -> i32 {
    verdict(nat::rnat(&ctx))
}

#[inline(always)]
fn verdict(result: nat::Verdict) -> i32 {
    match result {
        nat::Verdict::Pass => TC_ACT_NEXT,
        nat::Verdict::Done(reason) => {
            stats::count_reason(reason);
            if reason.is_drop() {
                TC_ACT_SHOT
            } else {
                TC_ACT_NEXT
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
