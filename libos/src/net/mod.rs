//! The network stack: smoltcp over the virtio-net device. Addressing from the command line
//! (`ip=10.0.2.15/24 gw=10.0.2.2`) or DHCP when none is given. Polled: the application
//! calls [`Stack::poll`] from its loop; nothing runs behind its back.

use crate::drivers::virtio_net::{self, NetDevice};
use crate::{arch::x86_64::cpu, cmdline, time};
use alloc::vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

pub use smoltcp;

/// The interface, its device and the sockets on it.
pub struct Stack {
    pub iface: Interface,
    device: NetDevice,
    pub sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
}

/// How the address is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    Static { address: Ipv4Cidr, gateway: Option<Ipv4Address> },
    Dhcp,
}

impl Addressing {
    /// `ip=A.B.C.D/N [gw=A.B.C.D]` from the command line, DHCP without `ip=`.
    pub fn from_cmdline(line: &str) -> Result<Self, &'static str> {
        let Some(ip) = cmdline::value(line, "ip") else { return Ok(Addressing::Dhcp) };
        let (addr, prefix) = ip.split_once('/').ok_or("ip= needs a prefix length, e.g. ip=10.0.2.15/24")?;
        let addr: Ipv4Address = addr.parse().map_err(|_| "ip= is not an IPv4 address")?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or("ip= prefix must be 0..32")?;
        let gateway = match cmdline::value(line, "gw") {
            Some(gw) => Some(gw.parse().map_err(|_| "gw= is not an IPv4 address")?),
            None => None,
        };
        Ok(Addressing::Static { address: Ipv4Cidr::new(addr, prefix), gateway })
    }
}

fn now() -> Instant {
    Instant::from_micros((time::now_ns() / 1000) as i64)
}

impl Stack {
    /// Finds the NIC and brings the interface up. `None` without a virtio-net device.
    pub fn new(addressing: Addressing) -> Option<Self> {
        let mut device = virtio_net::probe()?;
        let mac = EthernetAddress(device.mac_address());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = cpu::rdrand().unwrap_or_else(|| time::now_ns() ^ 0x5DEE_CE66);
        let mut iface = Interface::new(config, &mut device, now());
        let mut sockets = SocketSet::new(vec![]);
        let mut dhcp = None;
        match addressing {
            Addressing::Static { address, gateway } => {
                iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::Ipv4(address));
                });
                if let Some(gw) = gateway {
                    let _ = iface.routes_mut().add_default_ipv4_route(gw);
                }
                log::info!("net: address {address}, gateway {gateway:?}");
            }
            Addressing::Dhcp => {
                dhcp = Some(sockets.add(dhcpv4::Socket::new()));
                log::info!("net: asking DHCP for an address");
            }
        }
        Some(Self { iface, device, sockets, dhcp })
    }

    /// Moves packets between the device and the sockets; applies DHCP leases. Returns
    /// whether a socket may have changed (packets came or went): the caller has work.
    pub fn poll(&mut self) -> bool {
        let now = now();
        let changed = self.iface.poll(now, &mut self.device, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged;
        let Some(handle) = self.dhcp else { return changed };
        match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            Some(dhcpv4::Event::Configured(lease)) => {
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(IpCidr::Ipv4(lease.address));
                });
                if let Some(router) = lease.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                }
                log::info!("net: DHCP lease {} via {:?}", lease.address, lease.router);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                log::warn!("net: DHCP lease lost");
            }
            None => {}
        }
        changed
    }

    /// The interface's IPv4 address, once it has one.
    pub fn ipv4_address(&self) -> Option<Ipv4Address> {
        self.iface.ipv4_addr()
    }

    /// Adds a TCP socket with buffers of `rx` and `tx` bytes.
    pub fn add_tcp_socket(&mut self, rx: usize, tx: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; rx]);
        let tx = tcp::SocketBuffer::new(vec![0; tx]);
        let mut socket = tcp::Socket::new(rx, tx);
        // Acknowledge at once: with smoltcp's default 10 ms delayed ACK a sender that waits
        // for each ACK (QEMU's user network does) gets one segment per 10 ms, ~140 KB/s.
        socket.set_ack_delay(None);
        self.sockets.add(socket)
    }

    /// Microseconds until smoltcp needs another poll (timers), if it said.
    pub fn poll_delay_us(&mut self) -> Option<u64> {
        self.iface.poll_delay(now(), &self.sockets).map(|d| d.total_micros())
    }
}
