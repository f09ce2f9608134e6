//! Packet delay between one member and its peers (needs `--netns`). This kernel has no netem
//! qdisc and nftables cannot hold packets, so the delay is a userspace relay (`relay`) in the
//! member's namespace with nftables NAT there sending its peer traffic through it:
//! - OUTPUT: the member's connections to a peer's raft port (2380, which also carries write
//!   forwarding) or API port (6443: join, promote) go to the relay's outbound listener, which
//!   connects on with a socket mark the rules skip;
//! - PREROUTING: a peer's connections to those ports go to the relay's inbound listener, which
//!   connects on to the member itself;
//! - existing direct connections on those ports are reset (a reject rule for unmarked, un-NATed
//!   packets), so the long-lived gRPC channels reconnect through the relay at once instead of
//!   bypassing it for the whole fault.
//!
//! Each direction holds every chunk D ms, so a round trip between the member and a peer grows by
//! 2D. The inject step measures that round trip before and during the fault from both sides and
//! fails unless the increase is really there. Heal deletes the rules, then stops the relay,
//! which closes the relayed connections; their owners reconnect directly. Client traffic from
//! the control namespace (ports 2379/6443 from its own address) is never delayed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{Instrument, info, info_span};

use crate::error::ChaosError;
use crate::nemesis::{MemberControl, Nemesis, Target};
use crate::netns::{NetnsTopology, run_in_netns};
use crate::relay::{DelayRelay, RelaySpec};

/// The member-to-member ports whose traffic is delayed: raft (and forwarding), API (joins).
const PEER_PORTS: [u16; 2] = [2380, 6443];
/// The port the round-trip probe uses (the raft port: TLS, it closes on a bad hello).
const PROBE_PORT: u16 = 2380;
const OUTBOUND_PORT: u16 = 47380;
const INBOUND_PORT: u16 = 47381;
/// The mark on the relay's own upstream sockets.
const RELAY_MARK: u32 = 0x5c1f;
const DELAY_TABLE: &str = "skiff_chaos_delay";
/// Round trips per probe; the smallest counts (the relay's hold is a floor, never a ceiling).
const PROBES: usize = 3;

struct Applied {
    member: usize,
    relay: Option<DelayRelay>,
}

pub struct PacketDelay {
    target: Target,
    topology: NetnsTopology,
    /// Range the per-fault delay is picked from, in ms (each direction).
    range_ms: (u64, u64),
    rng: StdRng,
    applied: Option<Applied>,
}

impl PacketDelay {
    /// `seed` picks each fault's delay, so a seed replays the same delays.
    pub fn new(
        target: Target,
        range_ms: (u64, u64),
        topology: NetnsTopology,
        seed: u64,
    ) -> PacketDelay {
        PacketDelay {
            target,
            topology,
            range_ms,
            rng: StdRng::seed_from_u64(seed ^ 0xde1a),
            applied: None,
        }
    }

    fn member_addr(&self, member: usize) -> Result<Ipv4Addr, ChaosError> {
        let ip = self.topology.member_ip(member);
        ip.parse()
            .map_err(|e| ChaosError::Netns(format!("member address {ip}: {e}")))
    }

    /// The nftables ruleset for `member` (see the module comment).
    fn rules(&self, member: usize) -> Result<String, ChaosError> {
        let own = self.member_addr(member)?;
        let peers: Vec<String> = (0..self.topology.size)
            .filter(|o| *o != member)
            .map(|o| self.topology.member_ip(o))
            .collect();
        let peers = peers.join(", ");
        let ports = PEER_PORTS.map(|p| p.to_string()).join(", ");
        Ok(format!(
            "table ip {DELAY_TABLE} {{\n\
             chain redirect_out {{ type nat hook output priority -100; policy accept; \
             meta mark != {RELAY_MARK:#x} ip daddr {{ {peers} }} tcp dport {{ {ports} }} dnat to {own}:{OUTBOUND_PORT}; }}\n\
             chain redirect_in {{ type nat hook prerouting priority -100; policy accept; \
             ip saddr {{ {peers} }} tcp dport {{ {ports} }} dnat to {own}:{INBOUND_PORT}; }}\n\
             chain cut_direct {{ type filter hook output priority 0; policy accept; \
             meta mark != {RELAY_MARK:#x} ip daddr {{ {peers} }} tcp dport {{ {ports} }} reject with tcp reset; \
             ip daddr {{ {peers} }} tcp sport {{ {ports} }} reject with tcp reset; }}\n}}\n"
        ))
    }

    /// Smallest round trip (ms) from inside `from`'s namespace to `to`'s probe port, both ways:
    /// (peer -> member, member -> peer).
    async fn round_trips(&self, member: usize, peer: usize) -> Result<(f64, f64), ChaosError> {
        let inbound = SocketAddrV4::new(self.member_addr(member)?, PROBE_PORT);
        let outbound = SocketAddrV4::new(self.member_addr(peer)?, PROBE_PORT);
        let into = run_in_netns(&self.topology.member_ns(peer), move || {
            min_round_trip(inbound)
        })
        .await??;
        let out_of = run_in_netns(&self.topology.member_ns(member), move || {
            min_round_trip(outbound)
        })
        .await??;
        Ok((into, out_of))
    }

    async fn undo(&mut self) -> Result<Option<(usize, String)>, ChaosError> {
        let Some(mut applied) = self.applied.take() else {
            return Ok(None);
        };
        // Rules first: with the relay gone first, new connections would be redirected to a
        // closed port until the rules went.
        let removed = self
            .topology
            .delete_table(applied.member, "ip", DELAY_TABLE);
        let stats = match applied.relay.take() {
            Some(relay) => relay.stop().await,
            None => Default::default(),
        };
        removed?;
        Ok(Some((
            applied.member,
            format!(
                "{} connections, {} chunks, {} KiB relayed",
                stats.connections,
                stats.chunks,
                stats.bytes >> 10
            ),
        )))
    }

    async fn apply(&mut self, member: usize, delay: Duration) -> Result<String, ChaosError> {
        let size = self.topology.size;
        if size < 2 {
            return Err(ChaosError::Relay("no peers to delay".into()));
        }
        let peer = (member + 1) % size;
        let (before_in, before_out) = self.round_trips(member, peer).await?;
        let own = self.member_addr(member)?;
        let spec = RelaySpec {
            outbound: SocketAddrV4::new(own, OUTBOUND_PORT),
            inbound: SocketAddrV4::new(own, INBOUND_PORT),
            delay,
            mark: RELAY_MARK,
        };
        let relay = DelayRelay::start(&self.topology.member_ns(member), spec).await?;
        self.applied = Some(Applied {
            member,
            relay: Some(relay),
        });
        self.topology.load_rules(member, &self.rules(member)?)?;
        let (during_in, during_out) = self.round_trips(member, peer).await?;
        // The relay holds each direction at least `delay`: anything less means traffic
        // bypassed it.
        let floor = 2.0 * delay.as_secs_f64() * 1000.0;
        if during_in < floor || during_out < floor {
            return Err(ChaosError::Relay(format!(
                "round trips with member {member} are {during_in:.1} ms in / {during_out:.1} ms out, below the {floor:.0} ms the relay must add: traffic bypasses it"
            )));
        }
        info!(
            member,
            delay_ms = delay.as_millis() as u64,
            before_in,
            during_in,
            before_out,
            during_out,
            "peer traffic delayed"
        );
        Ok(format!(
            "delaying member {member}'s peer traffic (ports 2380, 6443) {} ms each way; measured round trip from member {peer}: {before_in:.1} -> {during_in:.1} ms, to member {peer}: {before_out:.1} -> {during_out:.1} ms",
            delay.as_millis()
        ))
    }
}

/// The smallest of `PROBES` round trips to `addr`, in ms: connect, send a line that is not a
/// TLS hello, wait for the server's answer or close. A fresh connection each time, so each
/// one is redirected like a new peer connection.
fn min_round_trip(addr: SocketAddrV4) -> Result<f64, ChaosError> {
    let mut best = f64::MAX;
    for _ in 0..PROBES {
        let probe_error = |e: std::io::Error| ChaosError::Relay(format!("probing {addr}: {e}"));
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(3))
            .map_err(probe_error)?;
        stream.set_nodelay(true).map_err(probe_error)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(probe_error)?;
        let started = Instant::now();
        stream
            .write_all(b"PROBE / HTTP/1.0\r\n\r\n")
            .map_err(probe_error)?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            // An alert, or the close after the failed handshake: either is the answer.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => return Err(probe_error(e)),
        }
        best = best.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(best)
}

impl Nemesis for PacketDelay {
    fn name(&self) -> &'static str {
        "packet-delay"
    }
    fn target(&self) -> Target {
        self.target
    }
    fn inject<'a>(
        &'a mut self,
        _ctl: &'a mut dyn MemberControl,
        member: usize,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        let delay = Duration::from_millis(self.rng.random_range(self.range_ms.0..=self.range_ms.1));
        let span = info_span!("packet_delay", member, delay_ms = delay.as_millis() as u64);
        Box::pin(
            async move {
                match self.apply(member, delay).await {
                    Ok(detail) => Ok(detail),
                    Err(e) => {
                        // Take back whatever part was made; the injection error is the news.
                        let _ = self.undo().await;
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
    fn heal<'a>(
        &'a mut self,
        _ctl: &'a mut dyn MemberControl,
    ) -> BoxFuture<'a, Result<String, ChaosError>> {
        Box::pin(async move {
            Ok(match self.undo().await? {
                Some((member, stats)) => {
                    format!("removed member {member}'s delay rules and stopped the relay ({stats})")
                }
                None => String::new(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_redirect_peer_ports_both_ways_and_spare_the_relay() {
        let topology = NetnsTopology::existing("t", "10.9.0.", 3);
        let d = PacketDelay::new(Target::Leader, (20, 100), topology, 1);
        let rules = d.rules(1).expect("rules");
        assert!(rules.contains(
            "ip daddr { 10.9.0.1, 10.9.0.3 } tcp dport { 2380, 6443 } dnat to 10.9.0.2:47380"
        ));
        assert!(rules.contains(
            "ip saddr { 10.9.0.1, 10.9.0.3 } tcp dport { 2380, 6443 } dnat to 10.9.0.2:47381"
        ));
        assert_eq!(rules.matches("meta mark != 0x5c1f").count(), 2);
        assert_eq!(rules.matches("reject with tcp reset").count(), 2);
    }
}
