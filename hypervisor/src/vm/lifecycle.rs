//! The VM lifecycle: its states, the host's actions on it, and the one table that says
//! which action is allowed in which state and where it leads ([`transition`]).
//! [`Vm`](super::Vm), the image's VM registry and the API's mock all ask it; none keeps
//! rules of its own.
//!
//! - `start`: `created` → `running`, once an image is loaded.
//! - `pause`: `running` → `paused`; `resume`: `paused` → `running`.
//! - `stop`: `running` or `paused` → `stopping`, answered at once; `stopping` → `stopped`
//!   when the last vCPU has left its loop ([`vcpus_left`]), which a later `GET` shows.
//! - `reset`: any state but `created` → `created` (a running, paused or stopping VM is
//!   stopped first), keeping the slots, the memory and the loaded image's entry point.
//!
//! Every other pair is refused with [`VmError::WrongState`] ("cannot pause a VM that is
//! paused"), or [`VmError::NoImage`] for a start without an image. The guest ends a
//! running or paused VM on its own, in one of the final states `exited` (it wrote the exit
//! port or called EXIT), `crashed` (triple fault, invalid state, a memory access no slot or
//! device answers) or `stopped` (every vCPU halted, or its time limit passed); those are
//! not actions but [`Vm::finish`](super::Vm::finish), where the first final state wins; a
//! guest's end that comes while the VM is `stopping` loses to the host's stop.
//! ACPI S5 is such an end (`exited`, status 0). A platform reset the guest asks for (the
//! reset register 0xCF9, the i8042) is no transition: the VM stays `running` while every
//! vCPU restarts at the entry with memory kept, as `reset` then `start` would do (see
//! `vm::platform`).
//!
//! The table is a `match` over every (state, action) pair without a wildcard arm: a new
//! state or action does not compile until each of its pairs is decided.

use super::VmError;
use alloc::string::String;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Memory and image may change; no vCPU exists yet.
    Created,
    Running,
    /// Running, with every vCPU held outside the guest by the host.
    Paused,
    /// The host asked it to stop: every vCPU leaves the guest at its next exit; the VM is
    /// `Stopped` once the last has left its loop.
    Stopping,
    Exited {
        status: u32,
    },
    Crashed {
        reason: String,
    },
    Stopped,
}

impl VmState {
    /// The state's name in the API (`docs/api/openapi.yaml`, `VmState`).
    pub fn name(&self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Exited { .. } => "exited",
            VmState::Crashed { .. } => "crashed",
            VmState::Stopped => "stopped",
        }
    }

    /// The VM has ended: no vCPU enters the guest again until a `reset`, and no more
    /// console output comes.
    pub fn is_final(&self) -> bool {
        match self {
            VmState::Created | VmState::Running | VmState::Paused | VmState::Stopping => false,
            VmState::Exited { .. } | VmState::Crashed { .. } | VmState::Stopped => true,
        }
    }

    /// Every vCPU must leave its loop at its next exit: the VM is stopping or has ended.
    pub fn ends_vcpus(&self) -> bool {
        *self == VmState::Stopping || self.is_final()
    }
}

/// What the host may ask of a VM (`POST /v1/vms/{id}/actions`: `{"action": "start"}`; the
/// JSON names are the lowercase variant names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Pause,
    Resume,
    Stop,
    Reset,
}

impl Action {
    pub const ALL: [Action; 5] = [Action::Start, Action::Pause, Action::Resume, Action::Stop, Action::Reset];

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Stop => "stop",
            Action::Reset => "reset",
        }
    }
}

/// The state `action` leads to from `state`, or why it is refused. `has_image`: an image
/// is loaded (only `start` asks).
pub fn transition(state: &VmState, action: Action, has_image: bool) -> Result<VmState, VmError> {
    use Action::{Pause, Reset, Resume, Start, Stop};
    use VmState::{Crashed, Created, Exited, Paused, Running, Stopped, Stopping};
    let refuse = || Err(VmError::WrongState { action: action.name(), state: state.name() });
    match (state, action) {
        (Created, Start) => {
            if has_image {
                Ok(Running)
            } else {
                Err(VmError::NoImage)
            }
        }
        (Created, Pause | Resume | Stop | Reset) => refuse(),
        (Running, Pause) => Ok(Paused),
        (Running, Stop) => Ok(Stopping),
        (Running, Reset) => Ok(Created),
        (Running, Start | Resume) => refuse(),
        (Paused, Resume) => Ok(Running),
        (Paused, Stop) => Ok(Stopping),
        (Paused, Reset) => Ok(Created),
        (Paused, Start | Pause) => refuse(),
        (Stopping, Reset) => Ok(Created),
        (Stopping, Start | Pause | Resume | Stop) => refuse(),
        (Exited { .. } | Crashed { .. } | Stopped, Reset) => Ok(Created),
        (Exited { .. } | Crashed { .. } | Stopped, Start | Pause | Resume | Stop) => refuse(),
    }
}

/// The state once the last vCPU has left its loop, if it changes: a stopping VM is
/// stopped, and a running or paused one whose vCPUs all halted is stopped too (a clean
/// end). A VM that has ended keeps its final state.
pub fn vcpus_left(state: &VmState) -> Option<VmState> {
    match state {
        VmState::Running | VmState::Paused | VmState::Stopping => Some(VmState::Stopped),
        VmState::Created | VmState::Exited { .. } | VmState::Crashed { .. } | VmState::Stopped => None,
    }
}

/// Whether an image may be loaded in `state`: only before the VM first runs (or after a
/// reset), when nothing executes the memory it overwrites.
pub fn check_image_load(state: &VmState) -> Result<(), VmError> {
    match state {
        VmState::Created => Ok(()),
        VmState::Running
        | VmState::Paused
        | VmState::Stopping
        | VmState::Exited { .. }
        | VmState::Crashed { .. }
        | VmState::Stopped => Err(VmError::WrongState { action: "load an image into", state: state.name() }),
    }
}

/// Whether bytes may be typed at the console (`POST .../console`) in `state`: in any state
/// but a final one or `stopping`. Before `start` and while paused they wait in the UART's receive FIFO
/// for the guest to read; an ended VM has no guest to read them.
pub fn check_console_input(state: &VmState) -> Result<(), VmError> {
    refuse_final(state, "type into the console of")
}

/// Whether memory slots may be added or deleted (`change`: "add a memory slot to" or
/// "delete a memory slot of") in `state`: in any state but a final one or `stopping`. A
/// running VM's slots change under it (a deleted slot's translations are zapped before the
/// answer); an ending or ended VM's wait for its `reset`.
pub fn check_slot_change(state: &VmState, change: &'static str) -> Result<(), VmError> {
    refuse_final(state, change)
}

/// `action` (as the error message words it) is allowed in every state but a final one or
/// `stopping` (whose vCPUs are leaving).
fn refuse_final(state: &VmState, action: &'static str) -> Result<(), VmError> {
    match state {
        VmState::Created | VmState::Running | VmState::Paused => Ok(()),
        VmState::Stopping | VmState::Exited { .. } | VmState::Crashed { .. } | VmState::Stopped => {
            Err(VmError::WrongState { action, state: state.name() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    /// One state of each kind.
    fn every_state() -> Vec<VmState> {
        alloc::vec![
            VmState::Created,
            VmState::Running,
            VmState::Paused,
            VmState::Stopping,
            VmState::Exited { status: 3 },
            VmState::Crashed { reason: "triple fault".into() },
            VmState::Stopped,
        ]
    }

    /// Every (state, action) pair with an image loaded and where it leads (`None`: refused
    /// as the wrong state): the documented lifecycle (`docs/api/openapi.yaml`, "VM
    /// lifecycle"), written out again by hand.
    #[rustfmt::skip]
    const TABLE: [(&str, Action, Option<&str>); 35] = {
        use Action::*;
        [
            ("created", Start, Some("running")),
            ("created", Pause, None),
            ("created", Resume, None),
            ("created", Stop, None),
            ("created", Reset, None),
            ("running", Start, None),
            ("running", Pause, Some("paused")),
            ("running", Resume, None),
            ("running", Stop, Some("stopping")),
            ("running", Reset, Some("created")),
            ("paused", Start, None),
            ("paused", Pause, None),
            ("paused", Resume, Some("running")),
            ("paused", Stop, Some("stopping")),
            ("paused", Reset, Some("created")),
            ("stopping", Start, None),
            ("stopping", Pause, None),
            ("stopping", Resume, None),
            ("stopping", Stop, None),
            ("stopping", Reset, Some("created")),
            ("exited", Start, None),
            ("exited", Pause, None),
            ("exited", Resume, None),
            ("exited", Stop, None),
            ("exited", Reset, Some("created")),
            ("crashed", Start, None),
            ("crashed", Pause, None),
            ("crashed", Resume, None),
            ("crashed", Stop, None),
            ("crashed", Reset, Some("created")),
            ("stopped", Start, None),
            ("stopped", Pause, None),
            ("stopped", Resume, None),
            ("stopped", Stop, None),
            ("stopped", Reset, Some("created")),
        ]
    };

    fn state_named(name: &str) -> VmState {
        every_state().into_iter().find(|s| s.name() == name).unwrap()
    }

    #[test]
    fn every_pair_leads_where_the_documented_lifecycle_says_or_is_refused_as_wrong_state() {
        for state in every_state() {
            for action in Action::ALL {
                let rows = TABLE.iter().filter(|(s, a, _)| *s == state.name() && *a == action).count();
                assert_eq!(rows, 1, "{} then {} is in the table once", state.name(), action.name());
            }
        }
        for (state, action, next) in TABLE {
            let got = transition(&state_named(state), action, true);
            let want = match next {
                Some(next) => Ok(state_named(next)),
                None => Err(VmError::WrongState { action: action.name(), state }),
            };
            assert_eq!(got, want, "{state} then {}", action.name());
        }
    }

    #[test]
    fn pause_on_paused_and_resume_on_running_are_refused() {
        let paused = transition(&VmState::Paused, Action::Pause, true).unwrap_err();
        assert_eq!(paused.to_string(), "cannot pause a VM that is paused");
        let running = transition(&VmState::Running, Action::Resume, true).unwrap_err();
        assert_eq!(running.to_string(), "cannot resume a VM that is running");
    }

    #[test]
    fn start_needs_an_image_and_nothing_else_looks_at_it() {
        assert_eq!(transition(&VmState::Created, Action::Start, false), Err(VmError::NoImage));
        for state in every_state() {
            for action in Action::ALL {
                if (&state, action) == (&VmState::Created, Action::Start) {
                    continue;
                }
                assert_eq!(
                    transition(&state, action, false),
                    transition(&state, action, true),
                    "{} then {}",
                    state.name(),
                    action.name()
                );
            }
        }
    }

    #[test]
    fn only_a_created_vm_takes_an_image() {
        for state in every_state() {
            let got = check_image_load(&state);
            if state == VmState::Created {
                assert_eq!(got, Ok(()));
            } else {
                assert_eq!(
                    got.unwrap_err().to_string(),
                    format!("cannot load an image into a VM that is {}", state.name())
                );
            }
        }
    }

    #[test]
    fn slots_change_and_console_input_is_taken_in_every_state_but_a_final_one_or_stopping() {
        let slot_change = |state: &VmState| check_slot_change(state, "add a memory slot to");
        type Check<'a> = &'a dyn Fn(&VmState) -> Result<(), VmError>;
        let checks: [(Check, &str); 2] =
            [(&slot_change, "add a memory slot to"), (&check_console_input, "type into the console of")];
        for (check, action) in checks {
            for state in every_state() {
                let got = check(&state);
                if state.ends_vcpus() {
                    assert_eq!(
                        got.unwrap_err().to_string(),
                        format!("cannot {action} a VM that is {}", state.name())
                    );
                } else {
                    assert_eq!(got, Ok(()), "{action} {}", state.name());
                }
            }
        }
    }

    #[test]
    fn exactly_the_final_states_are_final() {
        let finals: Vec<&str> = every_state().iter().filter(|s| s.is_final()).map(|s| s.name()).collect();
        assert_eq!(finals, ["exited", "crashed", "stopped"]);
        let ending: Vec<&str> = every_state().iter().filter(|s| s.ends_vcpus()).map(|s| s.name()).collect();
        assert_eq!(ending, ["stopping", "exited", "crashed", "stopped"]);
    }

    #[test]
    fn a_stopping_vm_is_stopped_once_its_last_vcpu_has_left_and_an_ended_one_keeps_its_end() {
        let after = |state: VmState| vcpus_left(&state).map(|s| s.name());
        assert_eq!(after(VmState::Stopping), Some("stopped"));
        assert_eq!(after(VmState::Running), Some("stopped"), "every vCPU halted");
        assert_eq!(after(VmState::Paused), Some("stopped"));
        for ended in
            [VmState::Exited { status: 1 }, VmState::Crashed { reason: "x".into() }, VmState::Stopped]
        {
            assert_eq!(after(ended), None);
        }
        assert_eq!(after(VmState::Created), None);
    }

    #[test]
    fn actions_are_named_on_the_wire_as_in_the_api() {
        for action in Action::ALL {
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{}\"", action.name()));
            assert_eq!(serde_json::from_str::<Action>(&json).unwrap(), action);
        }
    }
}
