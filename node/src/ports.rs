//! Free TCP ports on loopback for clusters of real processes (`dsm bench`,
//! the nemesis, the integration tests).
//!
//! A port found free is only free until someone binds it, and the children
//! that will listen on it bind it a moment later. Two habits make losing
//! that race rare: ports come from below Linux's ephemeral range (32768 and
//! up), where every outgoing connection on the machine would otherwise take
//! them between our check and the child's bind; and each process starts
//! probing at its own place in the range, so parallel test binaries and
//! benches seldom probe the same ports.

use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::bail;

/// Where ports are handed out: below the ephemeral range, above the
/// well-known and registered ports a developer's own services tend to use.
pub const PORT_RANGE: Range<u16> = 20_000..32_000;

/// How many places in the range [`free_ports`] probes before giving up.
const ATTEMPTS: u32 = 1000;

/// A free TCP port on 127.0.0.1.
///
/// # Errors
/// When no port of [`PORT_RANGE`] is free.
pub fn free_port() -> anyhow::Result<u16> {
    free_ports(1)
}

/// The first of `n` consecutive free TCP ports on 127.0.0.1, for clusters
/// that number their members from a base port (`dsm local`).
///
/// # Errors
/// When `n` is zero or does not fit in [`PORT_RANGE`], or no `n`
/// consecutive ports of it are free.
pub fn free_ports(n: u16) -> anyhow::Result<u16> {
    // Where the next probe of this process starts: consecutive calls take
    // consecutive blocks instead of probing the same ports again.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    if n == 0 || n >= span {
        bail!("cannot look for {n} consecutive ports in {PORT_RANGE:?}");
    }
    // Each process starts at its own place in the range, drawn from its
    // pid: hashed, because processes started together (two benches of one
    // test binary) have neighbouring pids and would probe overlapping blocks.
    let hashed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let seed = (hashed % u64::from(span)) as u16;
    for _ in 0..ATTEMPTS {
        let offset = NEXT.fetch_add(n, Ordering::SeqCst);
        let base = PORT_RANGE.start + (seed.wrapping_add(offset) % (span - n));
        // Every port of the block is held until all are checked, so the
        // block is free as a whole at one instant.
        let held: Vec<TcpListener> = (base..base + n)
            .map_while(|port| TcpListener::bind(("127.0.0.1", port)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports on 127.0.0.1 in {PORT_RANGE:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_ranges_are_free() {
        let base = free_ports(5).unwrap();
        for i in 0..5 {
            assert!(TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        }
    }

    #[test]
    fn ports_come_from_the_range_and_impossible_counts_are_refused() {
        let base = free_ports(3).unwrap();
        assert!(PORT_RANGE.contains(&base) && PORT_RANGE.contains(&(base + 2)));
        assert!(free_port().is_ok());
        assert!(free_ports(0).is_err());
        assert!(free_ports(PORT_RANGE.len() as u16).is_err());
    }
}
