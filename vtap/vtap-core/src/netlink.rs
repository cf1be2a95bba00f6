//! Interface discovery through rtnetlink: names, indexes and state of every
//! link in the daemon's network namespace. The engine resolves tap globs and
//! output interface names against a [`Links`] snapshot.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkMessage};

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
}

/// Interfaces by name.
pub type Links = BTreeMap<String, Link>;

/// Errors talking to rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the socket failed.
    #[error("opening an rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The dump failed.
    #[error("listing links over rtnetlink: {0}")]
    Dump(#[source] rtnetlink::Error),
}

/// One RTM_GETLINK dump of the current network namespace: `f` sees every
/// link's name (links without one are skipped) and attributes.
async fn each_link(mut f: impl FnMut(String, &LinkMessage)) -> Result<(), NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    let task = tokio::spawn(conn);
    let mut stream = handle.link().get().execute();
    let res = async {
        while let Some(msg) = stream.try_next().await.map_err(NetlinkError::Dump)? {
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                f(name, &msg);
            }
        }
        Ok::<_, NetlinkError>(())
    }
    .await;
    task.abort();
    res
}

/// Lists every link of the current network namespace (one RTM_GETLINK dump).
pub async fn list_links() -> Result<Links, NetlinkError> {
    let mut out = Links::new();
    each_link(|name, msg| {
        let mtu = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(0);
        out.insert(
            name,
            Link {
                ifindex: msg.header.index,
                up: msg.header.flags.contains(&LinkFlag::Up),
                mtu,
            },
        );
    })
    .await?;
    Ok(out)
}

/// Transmit failures counted by an interface itself (`ip -s link`): copies
/// vtap handed to an output device that the device then could not send
/// (a VXLAN device without a route to the remote, a full queue, a down
/// carrier).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxFailures {
    /// `tx_dropped`.
    pub dropped: u64,
    /// `tx_errors`.
    pub errors: u64,
}

/// The transmit failure counters of every link (one RTM_GETLINK dump).
pub async fn tx_failures() -> Result<BTreeMap<String, TxFailures>, NetlinkError> {
    let mut out = BTreeMap::new();
    each_link(|name, msg| {
        let tx = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Stats64(st) => Some(TxFailures {
                    dropped: st.tx_dropped,
                    errors: st.tx_errors,
                }),
                _ => None,
            })
            .unwrap_or_default();
        out.insert(name, tx);
    })
    .await?;
    Ok(out)
}

/// [`list_links`] for synchronous callers (tests, tools): runs a small
/// current-thread runtime.
pub fn list_links_blocking() -> Result<Links, NetlinkError> {
    runtime()
        .map_err(NetlinkError::Socket)?
        .block_on(list_links())
}

/// A small current-thread runtime for one rtnetlink exchange from
/// synchronous code.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Calls `on_change` whenever a link appears, changes or goes away in the
/// current network namespace (rtnetlink `RTMGRP_LINK` notifications), so
/// the daemon re-resolves interfaces at once instead of at its next
/// periodic refresh. Returns when the socket fails.
pub async fn watch_links(on_change: impl Fn()) -> Result<(), NetlinkError> {
    use futures::StreamExt;
    use netlink_proto::sys::{AsyncSocket, SocketAddr};
    const RTMGRP_LINK: u32 = 1;
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(NetlinkError::Socket)?;
    let task = tokio::spawn(conn);
    while messages.next().await.is_some() {
        on_change();
    }
    task.abort();
    Ok(())
}
