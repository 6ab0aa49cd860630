//! PCI configuration space through the legacy I/O ports (PCI Local Bus Specification 3.0,
//! §3.2.2.3.2 "Configuration Mechanism #1"), as `virtio-drivers` wants it.

use spin::Mutex;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use x86_64::instructions::port::Port;

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;
/// CONFIG_ADDRESS bit 31: enable configuration space mapping.
const CONFIG_ENABLE: u32 = 1 << 31;

/// The address/data pair is one shared register: every access holds this lock.
static CONFIG_LOCK: Mutex<()> = Mutex::new(());

/// Configuration mechanism #1 over ports 0xCF8/0xCFC.
pub struct PortCam;

fn address(df: DeviceFunction, offset: u8) -> u32 {
    CONFIG_ENABLE
        | (df.bus as u32) << 16
        | ((df.device as u32) & 0x1F) << 11
        | ((df.function as u32) & 0x7) << 8
        | (offset as u32 & 0xFC)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let _guard = CONFIG_LOCK.lock();
        // SAFETY: the architected configuration ports; the lock makes the address/data
        // pair atomic with respect to other users.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(address(df, offset));
            Port::<u32>::new(CONFIG_DATA).read()
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        let _guard = CONFIG_LOCK.lock();
        // SAFETY: as in `read_word`.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(address(df, offset));
            Port::<u32>::new(CONFIG_DATA).write(data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}
