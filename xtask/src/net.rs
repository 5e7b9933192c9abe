//! Loopback ports for the servers and agents the tasks start.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::{Context as _, Result};

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("binding an ephemeral loopback port")?
        .port())
}
