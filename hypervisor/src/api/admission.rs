//! Admission: which connections the API server keeps when clients misbehave. The policy is
//! here, as pure functions over what the server tells (host-tested with a fake clock);
//! the server (`app/server.rs`) only applies it to its smoltcp sockets.
//!
//! The scheme, against a peer that opens connections and never sends a request, trickles
//! a request one byte at a time, or vanishes without closing:
//! - **A fixed pool of sockets**, sized from the heap ([`socket_count`]: an eighth of the
//!   heap, [`MIN_SOCKETS`] to [`MAX_SOCKETS`]). Each socket listens on the API port and
//!   carries one connection at a time.
//! - **Every connection has deadlines.** The transport's: smoltcp sends a keep-alive
//!   after [`TCP_KEEP_ALIVE_MS`] of silence and aborts a connection whose peer has not
//!   answered for [`TCP_TIMEOUT_MS`] (a half-open connection); a socket that stays in a
//!   closing state (CLOSE-WAIT, FIN-WAIT, CLOSING, LAST-ACK) longer than
//!   [`CLOSING_TIMEOUT_MS`] is aborted. The request's, kept by
//!   [`Connection`](super::Connection): the first head within `head_timeout_ms` of the
//!   accept, every head within `head_timeout_ms` of its first byte, every body within
//!   [`body_time_ms`] of its head (a floor plus a minimum rate times its `Content-Length`),
//!   and `idle_timeout_ms` between requests. Trickling bytes resets none of these but the
//!   idle timer, which does not run during a request.
//! - **Unauthenticated connections go first.** A connection is *authenticated* once one
//!   of its request heads carried the right bearer token. At most [`PER_PEER_CAP`]
//!   unauthenticated connections per peer address are kept, and at least
//!   [`LISTEN_RESERVE`] sockets stay listening (smoltcp accepts a SYN only on a socket in
//!   LISTEN): when a new connection breaks either rule, [`evictions`] picks the
//!   unauthenticated connections idle longest (of that peer, then of anyone) and the server
//!   aborts them. An authenticated connection is never evicted and never counted against
//!   a cap, so an operator with the token always finds a listening socket and keeps it.
//!
//! The per-peer cap evicts rather than refuses: behind a NAT (QEMU's user network forwards
//! every host connection from one guest-side address, 10.0.2.2) the operator shares its
//! address with the abusers, and refusing the newest connection would refuse the operator
//! before it could show its token. Evicting the peer's longest-idle connection lets every
//! newcomer send its head; an operator's connection is the youngest and sends its head at
//! once, so it is authenticated before [`PER_PEER_CAP`] newer connections push it out.

use super::Limits;
use alloc::vec::Vec;

/// Fewest sockets, whatever the heap.
pub const MIN_SOCKETS: usize = 16;
/// Most sockets.
pub const MAX_SOCKETS: usize = 64;
/// Receive buffer per socket: an image upload streams through it.
pub const SOCKET_RX_BYTES: usize = 64 * 1024;
/// Send buffer per socket (the connection keeps its own output backlog on top).
pub const SOCKET_TX_BYTES: usize = 16 * 1024;
/// Sockets kept listening for new connections.
pub const LISTEN_RESERVE: usize = 2;
/// Unauthenticated connections kept per peer address.
pub const PER_PEER_CAP: usize = 8;
/// smoltcp aborts a connection whose peer has not answered (data or keep-alive) for this
/// long.
pub const TCP_TIMEOUT_MS: u64 = 30_000;
/// smoltcp probes a silent peer this often.
pub const TCP_KEEP_ALIVE_MS: u64 = 10_000;
/// A socket in a closing state longer than this is aborted.
pub const CLOSING_TIMEOUT_MS: u64 = 10_000;

/// How many sockets a heap of `heap_bytes` pays for: an eighth of it in socket buffers.
#[must_use]
pub fn socket_count(heap_bytes: u64) -> usize {
    let per_socket = (SOCKET_RX_BYTES + SOCKET_TX_BYTES) as u64;
    usize::try_from(heap_bytes / 8 / per_socket).unwrap_or(usize::MAX).clamp(MIN_SOCKETS, MAX_SOCKETS)
}

/// How long a request body of `len` bytes may take to arrive after its head: at least
/// `body_timeout_ms`, plus one second per `min_body_bytes_per_s` bytes.
#[must_use]
pub fn body_time_ms(limits: &Limits, len: u64) -> u64 {
    let rate = limits.min_body_bytes_per_s.max(1);
    let proportional = u64::try_from(u128::from(len) * 1000 / u128::from(rate)).unwrap_or(u64::MAX);
    limits.body_timeout_ms.saturating_add(proportional)
}

/// One socket as the admission policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket<P> {
    /// Listening, or free to listen again at once.
    Free,
    /// Closing or otherwise not carrying a connection that may be evicted.
    Busy,
    /// Carrying a connection.
    Connection { peer: P, last_activity_ms: u64, authenticated: bool },
}

impl<P> Socket<P> {
    fn evictable(&self) -> Option<u64> {
        match self {
            Socket::Connection { last_activity_ms, authenticated: false, .. } => Some(*last_activity_ms),
            _ => None,
        }
    }
}

/// Why a connection is evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Its peer holds more than [`PER_PEER_CAP`] unauthenticated connections.
    PeerCap,
    /// Fewer than [`LISTEN_RESERVE`] sockets would listen.
    Reserve,
}

/// The connections (indices into `sockets`) to abort so that no peer holds more than
/// `per_peer` unauthenticated connections and at least `reserve` sockets are free: each
/// time the unauthenticated one idle longest (of the peer over its cap, then of anyone).
/// Authenticated connections are never chosen; when only they remain, fewer than
/// `reserve` sockets may be free.
#[must_use]
pub fn evictions<P: Copy + Eq>(
    sockets: &[Socket<P>],
    per_peer: usize,
    reserve: usize,
) -> Vec<(usize, Eviction)> {
    let mut chosen: Vec<(usize, Eviction)> = Vec::new();
    let taken = |chosen: &[(usize, Eviction)], i: usize| chosen.iter().any(|(c, _)| *c == i);
    // The unauthenticated connection idle longest among those `include` accepts.
    let oldest = |chosen: &[(usize, Eviction)], include: &dyn Fn(&Socket<P>) -> bool| {
        sockets
            .iter()
            .enumerate()
            .filter(|(i, s)| !taken(chosen, *i) && include(s))
            .filter_map(|(i, s)| s.evictable().map(|t| (t, i)))
            .min()
            .map(|(_, i)| i)
    };
    for (i, socket) in sockets.iter().enumerate() {
        let Socket::Connection { peer, authenticated: false, .. } = *socket else { continue };
        let of_peer = |s: &Socket<P>| matches!(s, Socket::Connection { peer: p, .. } if *p == peer);
        let first_of_peer = sockets[..i].iter().any(|s| s.evictable().is_some() && of_peer(s));
        if first_of_peer {
            continue;
        }
        let count = sockets.iter().filter(|s| s.evictable().is_some() && of_peer(s)).count();
        for _ in per_peer..count {
            if let Some(victim) = oldest(&chosen, &of_peer) {
                chosen.push((victim, Eviction::PeerCap));
            }
        }
    }
    let free = sockets.iter().filter(|s| matches!(s, Socket::Free)).count() + chosen.len();
    for _ in free..reserve {
        match oldest(&chosen, &|_| true) {
            Some(victim) => chosen.push((victim, Eviction::Reserve)),
            None => break,
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: u8, last_activity_ms: u64, authenticated: bool) -> Socket<u8> {
        Socket::Connection { peer, last_activity_ms, authenticated }
    }

    #[test]
    fn sockets_are_sized_from_the_heap_within_bounds() {
        assert_eq!(socket_count(16 << 20), 25);
        assert_eq!(socket_count(1 << 20), MIN_SOCKETS);
        assert_eq!(socket_count(256 << 20), MAX_SOCKETS);
        assert_eq!(socket_count(u64::MAX), MAX_SOCKETS);
    }

    #[test]
    fn a_body_gets_a_floor_plus_time_in_proportion_to_its_length() {
        let limits = Limits::default();
        assert_eq!(body_time_ms(&limits, 0), limits.body_timeout_ms);
        assert_eq!(body_time_ms(&limits, limits.min_body_bytes_per_s * 10), limits.body_timeout_ms + 10_000);
        let slow = Limits { min_body_bytes_per_s: 1, ..limits };
        assert_eq!(body_time_ms(&slow, u64::MAX), u64::MAX, "no overflow");
        let no_rate = Limits { min_body_bytes_per_s: 0, ..limits };
        assert!(body_time_ms(&no_rate, 1000) > limits.body_timeout_ms, "a zero rate does not divide by 0");
    }

    #[test]
    fn nothing_is_evicted_while_the_rules_hold() {
        let sockets = [Socket::Free, Socket::Free, conn(1, 0, false), conn(2, 0, false), Socket::Busy];
        assert!(evictions(&sockets, 1, 2).is_empty());
    }

    #[test]
    fn the_unauthenticated_connection_idle_longest_goes_when_listeners_run_out() {
        let sockets = [conn(1, 50, false), conn(2, 10, true), conn(3, 20, false), Socket::Free, Socket::Busy];
        assert_eq!(evictions(&sockets, 8, 2), [(2, Eviction::Reserve)]);
        assert_eq!(evictions(&sockets, 8, 3), [(2, Eviction::Reserve), (0, Eviction::Reserve)]);
    }

    #[test]
    fn authenticated_connections_are_never_evicted() {
        let sockets = [conn(1, 0, true), conn(1, 1, true), conn(1, 2, true)];
        assert!(evictions(&sockets, 1, 2).is_empty(), "no cap and no reserve applies to them");
    }

    #[test]
    fn a_peer_over_its_cap_loses_its_longest_idle_connections_not_the_newcomer() {
        // Peer 1 holds four unauthenticated connections (one newly accepted, at 100) and
        // one authenticated; peer 2 one older than all of them.
        let sockets = [
            conn(2, 0, false),
            conn(1, 30, false),
            conn(1, 10, false),
            conn(1, 5, true),
            conn(1, 20, false),
            conn(1, 100, false),
            Socket::Free,
        ];
        let chosen = evictions(&sockets, 2, 1);
        assert_eq!(chosen, [(2, Eviction::PeerCap), (4, Eviction::PeerCap)]);
    }

    #[test]
    fn peer_cap_evictions_count_towards_the_reserve() {
        let sockets = [conn(1, 1, false), conn(1, 2, false), conn(2, 0, false)];
        assert_eq!(evictions(&sockets, 1, 1), [(0, Eviction::PeerCap)]);
        assert_eq!(evictions(&sockets, 1, 2), [(0, Eviction::PeerCap), (2, Eviction::Reserve)]);
    }

    /// A flood from one address (QEMU's user network) with the operator among it: with a
    /// fake clock, an abuser connects every millisecond and never sends; the operator
    /// connects, sends its head within a few milliseconds, and is authenticated. The
    /// server's loop is played: accept into a free socket, then evict.
    #[test]
    fn an_operator_behind_the_same_address_as_a_flood_keeps_its_connection() {
        const SOCKETS: usize = 16;
        let mut sockets = [Socket::<u8>::Free; SOCKETS];
        let accept = |sockets: &mut [Socket<u8>], now: u64, authenticated: bool| -> Option<usize> {
            let i = sockets.iter().position(|s| matches!(s, Socket::Free))?;
            sockets[i] = conn(7, now, authenticated);
            for (victim, _) in evictions(sockets, PER_PEER_CAP, LISTEN_RESERVE) {
                sockets[victim] = Socket::Free;
            }
            Some(i)
        };
        let mut operator = None;
        for now in 0..1000u64 {
            assert!(accept(&mut sockets, now, false).is_some(), "a socket always listens at {now} ms");
            if now == 500 {
                operator = accept(&mut sockets, now, false);
            }
            if now == 503 {
                // Its head arrived with the token.
                let i = operator.expect("accepted");
                assert!(matches!(sockets[i], Socket::Connection { .. }), "not evicted before its head");
                sockets[i] = conn(7, now, true);
            }
        }
        let i = operator.expect("accepted");
        assert_eq!(sockets[i], conn(7, 503, true), "the authenticated operator stays");
        let unauthenticated = sockets.iter().filter(|s| s.evictable().is_some()).count();
        assert_eq!(unauthenticated, PER_PEER_CAP);
    }
}
