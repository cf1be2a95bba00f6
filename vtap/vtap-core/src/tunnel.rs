//! vtap's own VXLAN device for `vxlan:` outputs.
//!
//! One collect-metadata ("external") VXLAN device, [`DEVICE`], carries the
//! copies of every `vxlan: {remote, vni}` output. The tap program clones a
//! copy to it with the output's id in `skb->mark` (the original's mark is put
//! back at once); `vtap_tunnel_tx` on the device's TC egress turns the mark
//! into the tunnel key (remote, VNI) of that copy alone. So the original
//! packet never carries tunnel metadata, and one device serves any number of
//! remotes and VNIs.
//!
//! The engine creates the device when the first enabled policy with a
//! `vxlan:` output appears and deletes it when the last one goes (and at
//! shutdown). The UDP port is the daemon's `vxlan_port` (default 4789); a
//! non-external VXLAN device already bound to that port in the namespace
//! makes creation fail (EADDRINUSE), reported in the log and the copies
//! counted as `output_down`. Underlay failures (no route to the remote) are
//! counted by the device itself (`ip -s link show vtap-vxlan`: tx errors),
//! exported as `vtap_output_device_tx_errors_total`.

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};

/// The device's name (reserved: an `interface:` output may not name it).
pub const DEVICE: &str = "vtap-vxlan";

/// The default UDP destination port (IANA VXLAN).
pub const DEFAULT_PORT: u16 = 4789;

/// Errors creating or deleting the device.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Opening the rtnetlink socket or a runtime failed.
    #[error("rtnetlink: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused.
    #[error("{what} {DEVICE}: {source}")]
    Netlink {
        /// What was tried.
        what: &'static str,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A device of that name exists and is not a collect-metadata VXLAN
    /// device on the wanted port.
    #[error(
        "{DEVICE} exists but is not vtap's VXLAN device (external, dstport {0}); delete it or change vxlan_port"
    )]
    Foreign(u16),
}

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, TunnelError>>,
) -> Result<T, TunnelError> {
    crate::netlink::runtime()
        .map_err(TunnelError::Socket)?
        .block_on(f)
}

/// What the kernel says of the device: (index, external, port), or None.
async fn inspect(handle: &rtnetlink::Handle) -> Result<Option<(u32, bool, u16)>, TunnelError> {
    let mut s = handle.link().get().match_name(DEVICE.to_string()).execute();
    let msg = match s.try_next().await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        // ENODEV: no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            return Ok(None);
        }
        Err(e) => {
            return Err(TunnelError::Netlink {
                what: "looking up",
                source: e,
            });
        }
    };
    let (mut external, mut port, mut vxlan) = (false, 0u16, false);
    for a in &msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => vxlan = true,
                    LinkInfo::Data(InfoData::Vxlan(d)) => {
                        for x in d {
                            match x {
                                InfoVxlan::CollectMetadata(c) => external = *c,
                                InfoVxlan::Port(p) => port = *p,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Some((msg.header.index, vxlan && external, port)))
}

/// Creates the device (external, `port`, no learning, up) unless vtap's
/// device is already there. Returns its interface index.
pub fn ensure_device(port: u16) -> Result<u32, TunnelError> {
    block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(TunnelError::Socket)?;
        let task = tokio::spawn(conn);
        let r = async {
            match inspect(&handle).await? {
                Some((idx, true, p)) if p == port => {
                    handle.link().set(idx).up().execute().await.map_err(|e| {
                        TunnelError::Netlink {
                            what: "setting up",
                            source: e,
                        }
                    })?;
                    return Ok(idx);
                }
                Some(_) => return Err(TunnelError::Foreign(port)),
                None => {}
            }
            handle
                .link()
                .add()
                .vxlan(DEVICE.to_string(), 0)
                .collect_metadata(true)
                .port(port)
                .learning(false)
                .up()
                .execute()
                .await
                .map_err(|e| TunnelError::Netlink {
                    what: "creating",
                    source: e,
                })?;
            match inspect(&handle).await? {
                Some((idx, _, _)) => Ok(idx),
                None => Err(TunnelError::Socket(std::io::Error::other(
                    "the device vanished right after it was created",
                ))),
            }
        }
        .await;
        task.abort();
        r
    })
}

/// Deletes the device if it exists.
pub fn delete_device() -> Result<(), TunnelError> {
    block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(TunnelError::Socket)?;
        let task = tokio::spawn(conn);
        let r = async {
            if let Some((idx, _, _)) = inspect(&handle).await? {
                handle
                    .link()
                    .del(idx)
                    .execute()
                    .await
                    .map_err(|e| TunnelError::Netlink {
                        what: "deleting",
                        source: e,
                    })?;
            }
            Ok(())
        }
        .await;
        task.abort();
        r
    })
}
