//! `svm-smoke` on the command line: the smallest possible child guest (a few real-mode
//! instructions assembled by hand), run on the boot CPU, to check the SVM world switch and
//! nested paging before the full VM machinery takes over.

use alloc::string::String;
use alloc::sync::Arc;
use hypervisor::addr::Gpa;
use hypervisor::backend::svm::{self, SvmPlatform, SvmVcpu, SvmVm};
use hypervisor::backend::{BackendVcpu, EntryMode, EntryState, Exit, GuestRegs};
use hypervisor::memslot::{AsId, SlotFlags, SlotId, SlotSpec};
use hypervisor::mmu::{Fault, Mmu, MmuConfig, Role};

/// mov dx, 0x3f8; mov al, 'O'; out dx, al; mov al, 'K'; out dx, al; mov al, 10;
/// out dx, al; cpuid; mov al, 0; out 0xf4, al; hlt
const CODE: [u8; 21] = [
    0xBA, 0xF8, 0x03, 0xB0, b'O', 0xEE, 0xB0, b'K', 0xEE, 0xB0, 0x0A, 0xEE, 0x0F, 0xA2, 0xB0, 0x00, 0xE6,
    0xF4, 0xF4, 0x90, 0x90,
];
const LOAD_AT: u64 = 0x7C00;

pub fn run() -> Result<i32, String> {
    svm::enable_on_this_cpu().map_err(|e| alloc::format!("{e}"))?;
    let vm = SvmVm::new().map_err(|e| alloc::format!("{e}"))?;
    let mmu: Mmu<SvmPlatform> = Mmu::new(
        MmuConfig::default(),
        Arc::new(hypervisor::backend::direct_map::DirectMap),
        vm.clone(),
        svm::LibosClock,
    );
    let spec = SlotSpec {
        id: SlotId(0),
        as_id: AsId::Normal,
        base: Gpa::new(0),
        size: 16 << 20,
        flags: SlotFlags::default(),
    };
    mmu.add_slot(spec).map_err(|e| alloc::format!("{e:?}"))?;
    mmu.write_guest(AsId::Normal, Gpa::new(LOAD_AT), &CODE).map_err(|e| alloc::format!("{e:?}"))?;
    let entry =
        EntryState { mode: EntryMode::Real16 { cs: 0, ip: LOAD_AT as u16 }, regs: GuestRegs::default() };
    let mut vcpu = SvmVcpu::new(&vm, &entry).map_err(|e| alloc::format!("{e}"))?;
    let mut vmmu = mmu.create_vcpu();
    let mut console = String::new();
    for _ in 0..1000 {
        vmmu.take_reload_request();
        let root = vmmu.load(Role::new(AsId::Normal)).map_err(|e| alloc::format!("{e:?}"))?;
        let exit = vcpu.run(root);
        vmmu.report_quiescent();
        match exit {
            Exit::Io(io) if !io.is_in && io.port == 0x3F8 => {
                console.push(vcpu.regs().rax as u8 as char);
                vcpu.set_rip(io.next_rip);
            }
            Exit::Io(io) if !io.is_in && io.port == 0xF4 => {
                log::info!("svm-smoke: guest said {:?}, exit status {}", console, vcpu.regs().rax as u8);
                log::info!("svm-smoke: mmu {:?}", mmu.stats());
                return Ok(vcpu.regs().rax as u8 as i32);
            }
            Exit::Cpuid => vcpu.skip_exiting_instruction(),
            Exit::HostInterrupt => {}
            Exit::NestedPageFault { gpa, access } => {
                match vmmu.handle_fault(Gpa::new(gpa), access).map_err(|e| alloc::format!("{e:?}"))? {
                    Fault::Installed | Fault::Retry => {}
                    other => return Err(alloc::format!("fault at {gpa:#x}: {other:?}")),
                }
            }
            other => return Err(alloc::format!("unexpected exit {other:?}: {}", vcpu.describe())),
        }
    }
    Err("guest did not finish in 1000 exits".into())
}
