//! A frame as the translation reads and writes it, whichever hook it is at: a socket buffer at
//! TC (the kernel's copying helpers, and its checksum helpers, which know how the buffer's
//! checksum is kept), or an XDP buffer (one linear buffer, read and written in place, and
//! checksums updated here: a frame at XDP comes straight from the wire, its checksums
//! complete).

use ambassador_common::{csum, monitor::datapath};
use aya_ebpf::{
    bindings::BPF_F_MARK_MANGLED_0,
    programs::{TcContext, XdpContext},
    EbpfContext,
};

/// Size bits of a checksum update's flags (2 or 4 bytes replaced), as the TC helper takes them.
const CSUM_SIZE: u64 = 0xf;

/// A frame at a hook.
pub trait Frame: EbpfContext {
    /// The datapath this kind of frame belongs to (`ambassador_common::monitor::datapath`).
    const DATAPATH: u8;
    /// [`Frame::DATAPATH`] of this frame.
    #[inline(always)]
    fn datapath(&self) -> u8 {
        Self::DATAPATH
    }
    /// Start of the packet's directly accessible bytes.
    fn data(&self) -> usize;
    /// End of them.
    fn data_end(&self) -> usize;
    /// A bounds-checked copy of the `T` at `off` from the frame's start.
    fn load<T>(&self, off: usize) -> Result<T, i64>;
    /// Writes `v` at `off`.
    fn store<T>(&self, off: usize, v: &T) -> Result<(), i64>;
    /// Replaces `from` by `to` (2 or 4 bytes, network byte order, in `flags`' size bits) in
    /// the L4 checksum at `csum_off`; `flags` as for `bpf_l4_csum_replace`
    /// (`BPF_F_PSEUDO_HDR` for an address of the pseudo header, `BPF_F_MARK_MANGLED_0` for a
    /// UDP checksum of zero, which means none and stays so).
    fn l4_csum_replace(&self, csum_off: usize, from: u64, to: u64, flags: u64) -> Result<(), i64>;
}

impl Frame for TcContext {
    const DATAPATH: u8 = datapath::TC;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn load<T>(&self, off: usize) -> Result<T, i64> {
        TcContext::load(self, off)
    }
    #[inline(always)]
    fn store<T>(&self, off: usize, v: &T) -> Result<(), i64> {
        TcContext::store(self, off, v, 0)
    }
    #[inline(always)]
    fn l4_csum_replace(&self, csum_off: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        TcContext::l4_csum_replace(self, csum_off, from, to, flags)
    }
}

impl Frame for XdpContext {
    const DATAPATH: u8 = datapath::XDP;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    /// Read in place: an XDP frame (loaded without multi-buffer support) is one linear buffer.
    #[inline(always)]
    fn load<T>(&self, off: usize) -> Result<T, i64> {
        let at = XdpContext::data(self) + off;
        if at + core::mem::size_of::<T>() > XdpContext::data_end(self) {
            return Err(-1);
        }
        // SAFETY: the whole T lies inside the frame (checked above, as the verifier wants).
        Ok(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
    /// Written in place, as [`Frame::load`] reads.
    #[inline(always)]
    fn store<T>(&self, off: usize, v: &T) -> Result<(), i64> {
        let at = XdpContext::data(self) + off;
        if at + core::mem::size_of::<T>() > XdpContext::data_end(self) {
            return Err(-1);
        }
        // SAFETY: as in `load`; nothing else holds a reference into the frame.
        unsafe { core::ptr::write_unaligned(at as *mut T, core::ptr::read(v)) };
        Ok(())
    }
    /// RFC 1624 on the checksum in the frame.
    #[inline(always)]
    fn l4_csum_replace(&self, csum_off: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        let old_be: u16 = Frame::load(self, csum_off)?;
        let mangled0 = flags & BPF_F_MARK_MANGLED_0 as u64 != 0;
        if mangled0 && old_be == 0 {
            return Ok(());
        }
        let old = u16::from_be(old_be);
        let mut new = if flags & CSUM_SIZE == 2 {
            csum::replace2(old, u16::from_be(from as u16), u16::from_be(to as u16))
        } else {
            csum::replace4(old, u32::from_be(from as u32), u32::from_be(to as u32))
        };
        if mangled0 && new == 0 {
            new = 0xffff;
        }
        Frame::store(self, csum_off, &new.to_be())
    }
}
