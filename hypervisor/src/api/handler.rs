//! What the router calls: one method per resource operation. Arguments are already
//! validated (ids, numbers, JSON shapes); a method checks what only it can know (does the
//! VM exist, is it in the right state, is there memory) and answers with an [`ApiError`]
//! whose status says which. A failed call must change nothing.

use super::error::ApiError;
use super::model::{
    Action, ConsoleAccepted, ConsoleRead, HypervisorInfo, MemslotInfo, MemslotSpec, UploadRequest, Uploaded,
    VmCreate, VmId, VmInfo,
};
use crate::vm::VmStats;
use alloc::vec::Vec;

/// The hypervisor as the API sees it. The image implements it over its VM registry and
/// [`crate::vm::Vm`]; [`super::mock::MockHypervisor`] implements it in memory for tests.
///
/// One handler serves every connection, each call on the caller's thread, so a call must
/// not block: no call waits for a guest (a long-poll is the connection's business, which
/// calls [`ApiHandler::read_console`] again later).
pub trait ApiHandler {
    /// State kept for one image upload between [`begin_image`](Self::begin_image) and
    /// [`finish_image`](Self::finish_image) or [`abort_image`](Self::abort_image); the
    /// connection that streams the body owns it, so several uploads (to different VMs)
    /// can be in flight at once.
    type Upload;

    /// `GET /v1/info`.
    fn info(&mut self) -> Result<HypervisorInfo, ApiError>;

    /// `PUT /v1/vms/{id}`: creates a VM (409 if `id` exists, 400 for an invalid
    /// configuration, 503 without memory). A failed create leaves nothing behind.
    fn create_vm(&mut self, id: &VmId, config: &VmCreate) -> Result<VmInfo, ApiError>;

    /// `GET /v1/vms/{id}`.
    fn vm(&mut self, id: &VmId) -> Result<VmInfo, ApiError>;

    /// `GET /v1/vms`, in a stable order.
    fn list_vms(&mut self) -> Result<Vec<VmInfo>, ApiError>;

    /// `DELETE /v1/vms/{id}`: stops the VM if it runs and frees it.
    fn delete_vm(&mut self, id: &VmId) -> Result<(), ApiError>;

    /// `PUT /v1/vms/{id}/memslots/{slot}`: adds a slot (409 on overlap or if the slot
    /// exists).
    fn put_memslot(&mut self, id: &VmId, slot: u32, spec: &MemslotSpec) -> Result<MemslotInfo, ApiError>;

    /// `DELETE /v1/vms/{id}/memslots/{slot}`.
    fn delete_memslot(&mut self, id: &VmId, slot: u32) -> Result<(), ApiError>;

    /// `PUT /v1/vms/{id}/image` or `/initrd` (`request` says which), first step: `total_len` body bytes will follow. Refuse
    /// here what can be refused before any byte arrives: unknown VM (404), wrong state or
    /// an upload already in flight for this VM (409), `total_len` beyond the VM's memory
    /// (413). An image upload that begins unloads the VM's image (its body streams into guest
    /// memory, over what the old image occupied): a failed one leaves the VM without one.
    fn begin_image(
        &mut self,
        id: &VmId,
        request: &UploadRequest,
        total_len: u64,
    ) -> Result<Self::Upload, ApiError>;

    /// The body bytes at `offset` (offsets are contiguous, from 0 to `total_len`). An error
    /// ends the upload: the connection then calls [`abort_image`](Self::abort_image).
    fn image_chunk(&mut self, upload: &mut Self::Upload, offset: u64, bytes: &[u8]) -> Result<(), ApiError>;

    /// Every byte arrived: validate and load. On error, undo whatever the upload did
    /// before returning (the connection calls nothing else for this upload).
    fn finish_image(&mut self, upload: Self::Upload) -> Result<Uploaded, ApiError>;

    /// The upload ends early (a chunk failed, the client went away, a timeout): undo
    /// whatever it did.
    fn abort_image(&mut self, upload: Self::Upload);

    /// `POST /v1/vms/{id}/actions`: the VM after the action. Which action is allowed in
    /// which state is [`crate::vm::lifecycle::transition`]'s to say, for every handler.
    fn action(&mut self, id: &VmId, action: Action) -> Result<VmInfo, ApiError>;

    /// `GET /v1/vms/{id}/console`: copies console bytes from absolute `offset` into `out`
    /// (as [`crate::devices::ConsoleRing::read`] does) and tells the VM's state.
    fn read_console(&mut self, id: &VmId, offset: u64, out: &mut [u8]) -> Result<ConsoleRead, ApiError>;

    /// `POST /v1/vms/{id}/console`: feeds `bytes` to the guest's console input, as many as
    /// it has room for now (none is dropped: the count says where the client resumes).
    /// 409 in a final state ([`crate::vm::lifecycle::check_console_input`]).
    fn console_input(&mut self, id: &VmId, bytes: &[u8]) -> Result<ConsoleAccepted, ApiError>;

    /// `GET /v1/vms/{id}/stats`: the VM's counters ([`crate::vm::Vm::stats`]).
    fn stats(&mut self, id: &VmId) -> Result<VmStats, ApiError>;
}
