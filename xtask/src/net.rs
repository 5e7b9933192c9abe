//! Loopback ports for the servers and agents the tasks start, and the agent's HTTP endpoints as
//! the tasks read them.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("binding an ephemeral loopback port")?
        .port())
}

/// One HTTP/1.0 GET (the agent's endpoint closes after the response): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers from {addr}{path}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line from {addr}{path}: {head}"))?;
    Ok((status, body.to_owned()))
}

/// `/metrics` as series (name and labels, as printed) → value.
pub fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(parse_metrics(&body))
}

pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `key` in a series' labels (`name{a="b",key="v"}`), or "?".
pub fn label(series: &str, key: &str) -> String {
    let needle = format!("{key}=\"");
    series
        .split_once(&needle)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("?".to_owned(), |(value, _)| value.to_owned())
}
