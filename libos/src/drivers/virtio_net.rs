//! virtio-net over PCI, through `virtio-drivers`: finding the device, the DMA glue (the
//! direct map makes physical and virtual addresses equal), and a smoltcp `Device`.

use super::pci::PortCam;
use crate::mm::frame;
use alloc::sync::Arc;
use core::ptr::NonNull;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use spin::Mutex;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::pci::bus::{Command, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Receive and transmit queue depth, and the size of each receive buffer (an Ethernet
/// frame plus the virtio-net header, rounded up).
const QUEUE_SIZE: usize = 32;
const RX_BUFFER_LEN: usize = 2048;
const MTU: usize = 1500;

/// DMA through the direct map: every frame's physical address is its virtual address, and
/// there is no IOMMU, so sharing a buffer is naming its address.
pub struct DirectMapHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned frames owned by the caller until
// `dma_dealloc`; every address handed out or translated is identity mapped, and the
// device sees the same physical memory the CPU does (no IOMMU, coherent DMA on x86).
unsafe impl Hal for DirectMapHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let phys = frame::alloc_zeroed(pages).expect("virtio-net: out of memory for DMA buffers");
        (phys as PhysAddr, NonNull::new(phys as *mut u8).expect("frames are never at address 0"))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        frame::free(paddr, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("a BAR is never at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

type Net = VirtIONet<DirectMapHal, PciTransport, QUEUE_SIZE>;

/// The first virtio-net device on PCI bus 0, with bus mastering and memory decoding on.
pub fn probe() -> Option<NetDevice> {
    let mut root = PciRoot::new(PortCam);
    let found = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Network))
        .map(|(df, _)| df)?;
    root.set_command(found, Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = match PciTransport::new::<DirectMapHal, _>(&mut root, found) {
        Ok(t) => t,
        Err(e) => {
            log::warn!(
                "net: virtio-net at {found:?} unusable: {e:?} (a modern or transitional device is needed)"
            );
            return None;
        }
    };
    match Net::new(transport, RX_BUFFER_LEN) {
        Ok(net) => {
            log::info!("net: virtio-net at {found:?}, MAC {:02x?}", net.mac_address());
            Some(NetDevice { inner: Arc::new(Mutex::new(net)) })
        }
        Err(e) => {
            log::warn!("net: virtio-net at {found:?} failed to start: {e:?}");
            None
        }
    }
}

/// The device as smoltcp sees it. Tokens share the driver through the `Arc`, since smoltcp
/// hands out a receive and a transmit token at once.
pub struct NetDevice {
    inner: Arc<Mutex<Net>>,
}

impl NetDevice {
    pub fn mac_address(&self) -> [u8; 6] {
        self.inner.lock().mac_address()
    }
}

pub struct RxToken {
    inner: Arc<Mutex<Net>>,
    buffer: virtio_drivers::device::net::RxBuffer,
}

pub struct TxToken {
    inner: Arc<Mutex<Net>>,
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken)> {
        let mut net = self.inner.lock();
        if !net.can_recv() || !net.can_send() {
            return None;
        }
        let buffer = net.receive().ok()?;
        Some((RxToken { inner: self.inner.clone(), buffer }, TxToken { inner: self.inner.clone() }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken> {
        self.inner.lock().can_send().then(|| TxToken { inner: self.inner.clone() })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(1);
        caps
    }
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.buffer.packet());
        if let Err(e) = self.inner.lock().recycle_rx_buffer(self.buffer) {
            log::warn!("net: could not recycle a receive buffer: {e:?}");
        }
        result
    }
}

impl phy::TxToken for TxToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut net = self.inner.lock();
        let mut buffer = net.new_tx_buffer(len);
        let result = f(buffer.packet_mut());
        if let Err(e) = net.send(buffer) {
            log::warn!("net: transmit failed: {e:?}");
        }
        result
    }
}
