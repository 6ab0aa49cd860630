//! A placeholder TCP answer on the control-plane port until the API server is wired in:
//! proves the NIC, smoltcp and the port forwarding work.

use libos::net::smoltcp::socket::tcp;
use libos::net::{Addressing, Stack};

pub const API_PORT: u16 = 8080;

pub fn serve(line: &str) -> ! {
    let addressing = match Addressing::from_cmdline(line) {
        Ok(a) => a,
        Err(e) => {
            log::error!("net: {e}");
            libos::smp::idle()
        }
    };
    let Some(mut stack) = Stack::new(addressing) else {
        log::warn!("net: no virtio-net device; the control plane is off");
        libos::smp::idle()
    };
    let handle = stack.add_tcp_socket(4096);
    loop {
        stack.poll();
        let socket = stack.sockets.get_mut::<tcp::Socket>(handle);
        if !socket.is_open() {
            let _ = socket.listen(API_PORT);
        }
        if socket.can_recv() {
            let _ = socket.recv(|data| (data.len(), ()));
            let _ = socket.send_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntaproot\n");
            socket.close();
        }
        core::hint::spin_loop();
    }
}
