//! Interface events (rtnetlink, `RTMGRP_LINK`): a pod's host interface appearing,
//! vanishing or being re-created by the CNI is acted on when the kernel says so, not at
//! the next timer tick. The messages' content does not matter: any is a reason to look
//! (the daemon compares its links with the interfaces that exist).
use std::io;
use std::time::Duration;

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};

/// `RTMGRP_LINK`: link creation, deletion and changes.
const RTMGRP_LINK: u32 = 1;

pub struct LinkEvents {
    sock: TokioSocket,
    /// When the burst being waited out began. Kept here, not in `next`'s future, so a
    /// `select!` that drops the future mid-wait (another branch won) loses no event: the
    /// next call finishes the wait instead of waiting for a message already taken.
    burst: Option<tokio::time::Instant>,
}

impl LinkEvents {
    pub fn open() -> io::Result<LinkEvents> {
        let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
        sock.socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(LinkEvents { sock, burst: None })
    }

    /// Waits for the next link event, then for the burst it starts to settle (an
    /// interface's creation, renaming and bringing up are several messages), and drains
    /// it: one call per burst. Cancel-safe.
    pub async fn next(&mut self) -> io::Result<()> {
        let began = match self.burst {
            Some(t) => t,
            None => {
                self.sock.recv_from_full().await?;
                *self.burst.insert(tokio::time::Instant::now())
            }
        };
        tokio::time::sleep_until(began + Duration::from_millis(50)).await;
        self.burst = None;
        let mut buf = Vec::with_capacity(64 * 1024);
        while self
            .sock
            .socket_ref()
            .recv(&mut buf, libc::MSG_DONTWAIT)
            .is_ok()
        {
            buf.clear();
        }
        Ok(())
    }
}

/// The next event of `events`, or never when there is no subscription.
pub async fn next(events: &mut Option<LinkEvents>) {
    match events {
        Some(e) => {
            if let Err(err) = e.next().await {
                log::warn!("interface events: {err}; falling back to the 2 s check");
                *events = None;
            }
        }
        None => std::future::pending().await,
    }
}
