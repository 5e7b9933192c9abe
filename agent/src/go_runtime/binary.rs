//! What the agent needs from a Go binary: its Go version and where the deadline functions are.
//!
//! A binary is recognised as Go by its `.go.buildinfo` section, which `-ldflags='-s -w'` keeps
//! (it drops the symbol table and DWARF). Function addresses come from the pclntab, which every
//! Go binary carries for its own stack traces, so stripped binaries are read the same way.

use std::{fs::File, path::Path};

use object::{Object as _, read::ReadCache};

/// A function the agent hooks, and the uprobe program for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The function's name in the pclntab.
    pub function: &'static str,
    /// The program in the eBPF object.
    pub program: &'static str,
    /// Hooked only where this other target is absent (it would run for the same event).
    pub unless: Option<&'static str>,
}

const H2_BUNDLED: &str = "net/http.(*http2stream).onWriteTimeout";
const H2_XNET: &str = "golang.org/x/net/http2.(*stream).onWriteTimeout";

/// The connection deadline timers (`runtime/netpoll.go`), present in every Go program that
/// uses the network, and net/http's HTTP/2 stream WriteTimeout (bundled, and in x/net). The
/// timer calls the stream's method through its method-value wrapper (`-fm`); where the
/// compiler inlined the method into the wrapper (Go 1.23) only the wrapper is left.
pub const TARGETS: [Target; 6] = [
    Target {
        function: "runtime.netpollWriteDeadline",
        program: "go_write_deadline",
        unless: None,
    },
    Target {
        function: "runtime.netpollDeadline",
        program: "go_read_write_deadline",
        unless: None,
    },
    Target {
        function: H2_BUNDLED,
        program: "go_h2_write_timeout",
        unless: None,
    },
    Target {
        function: "net/http.(*http2stream).onWriteTimeout-fm",
        program: "go_h2_write_timeout_fm",
        unless: Some(H2_BUNDLED),
    },
    Target {
        function: H2_XNET,
        program: "go_h2_write_timeout",
        unless: None,
    },
    Target {
        function: "golang.org/x/net/http2.(*stream).onWriteTimeout-fm",
        program: "go_h2_write_timeout_fm",
        unless: Some(H2_XNET),
    },
];

/// Go passes arguments in registers from 1.17 (ABIInternal); the programs read them there.
pub const OLDEST: (u32, u32) = (1, 17);

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: unreadable Go metadata: {1}")]
    Go(String, unstrip::Error),
    #[error("{path}: built with {version}; the deadline hooks need Go 1.17 or newer")]
    TooOld { path: String, version: String },
    #[error("{0}: the Go runtime's deadline timers are not in its pclntab")]
    NoTimers(String),
    #[error(
        "{path}: {size} bytes, over the {max} a Go binary may have to be read (its pclntab is \
         parsed from the whole file, in the agent's memory)"
    )]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{0}: reading its Go metadata failed ({1})")]
    Panicked(String, String),
}

/// The largest Go binary the agent reads. Its pclntab is parsed from the whole file in memory,
/// and the agent runs under a 256 MiB limit (the DaemonSet's): a workload's binary must not
/// push it over, at start (the rescan of running processes) or after. Real Go servers are tens
/// of MiB; the largest seen (Grafana, kubelet) stay under it.
pub const MAX_GO_BINARY: u64 = 160 << 20;

/// A Go binary's hook points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoBinary {
    /// As the build info says it (`go1.19.8`).
    pub version: String,
    /// Each target found, with its file offset (what a uprobe attaches at).
    pub hooks: Vec<(Target, u64)>,
}

/// Reads `path`: `Ok(None)` for anything that is not a Go executable.
pub fn inspect(path: &Path) -> Result<Option<GoBinary>, InspectError> {
    let shown = path.display().to_string();
    let read = |source| InspectError::Read {
        path: shown.clone(),
        source,
    };
    // Only the headers are read to tell Go from the rest (most execs are not Go).
    let file = File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Ok(None);
    };
    if elf.section_by_name(".go.buildinfo").is_none() || elf.section_by_name(".gopclntab").is_none()
    {
        return Ok(None);
    }
    drop(elf);
    if size > MAX_GO_BINARY {
        return Err(InspectError::TooLarge {
            path: shown,
            size,
            max: MAX_GO_BINARY,
        });
    }

    let bin = unstrip::GoBinary::open(path).map_err(|e| InspectError::Go(shown.clone(), e))?;
    let version = unstrip::BuildInfo::parse(&bin)
        .map(|b| b.go_version)
        .map_err(|e| InspectError::Go(shown.clone(), e))?;
    if parse_version(&version).is_none_or(|v| v < OLDEST) {
        return Err(InspectError::TooOld {
            path: shown,
            version,
        });
    }
    let table = unstrip::Pclntab::parse(&bin).map_err(|e| InspectError::Go(shown.clone(), e))?;
    let functions = table
        .functions()
        .map_err(|e| InspectError::Go(shown.clone(), e))?;
    let has = |name: &str| functions.iter().any(|f| f.name == name);
    let hooks: Vec<(Target, u64)> = TARGETS
        .iter()
        .filter(|t| t.unless.is_none_or(|other| !has(other)))
        .filter_map(|t| {
            let f = functions.iter().find(|f| f.name == t.function)?;
            let offset = bin.file_offset_for_addr(f.address)?;
            Some((*t, offset as u64))
        })
        .collect();
    if !hooks
        .iter()
        .any(|(t, _)| t.function.starts_with("runtime."))
    {
        return Err(InspectError::NoTimers(shown));
    }
    Ok(Some(GoBinary { version, hooks }))
}

/// `go1.19.8` (or `go1.21rc2`, `devel go1.23-abc`) -> (1, 19).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = &v[v.find("go1.")? + 2..];
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_version("go1.23.5"), Some((1, 23)));
        assert_eq!(parse_version("go1.21rc2"), Some((1, 21)));
        assert_eq!(parse_version("devel go1.24-1a2b3c"), Some((1, 24)));
        assert_eq!(parse_version("go1.16"), Some((1, 16)));
        assert_eq!(parse_version("unknown"), None);
    }

    #[test]
    fn a_go_binary_too_large_to_read_is_refused_before_it_is_read() {
        use object::{
            Architecture, BinaryFormat, Endianness, SectionKind, write::Object as Writer,
        };
        let mut elf = Writer::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        for name in [".go.buildinfo", ".gopclntab"] {
            let section = elf.add_section(
                Vec::new(),
                name.as_bytes().to_vec(),
                SectionKind::ReadOnlyData,
            );
            elf.append_section_data(section, &[0u8; 64], 8);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge-go");
        std::fs::write(&path, elf.write().unwrap()).unwrap();
        // Sparse: the size of a huge binary, none of its disk or of the test's memory.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(MAX_GO_BINARY + 1).unwrap();
        match inspect(&path) {
            Err(InspectError::TooLarge { size, .. }) => assert_eq!(size, MAX_GO_BINARY + 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_agent_itself_is_not_go() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(inspect(&exe).unwrap(), None);
    }
}
