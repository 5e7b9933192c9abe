//! tracefs: mounting it when needed, and reading classic tracepoint record layouts.

use std::{
    fs,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at {path} and mounting it failed: {source} \
         (mount it with `mount -t tracefs nodev {path}`)"
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read tracepoint format {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint format {path} has no field {field}")]
    NoField { path: PathBuf, field: String },
}

/// Whether `path` is a mounted tracefs (it then has `events/`).
pub fn is_mounted(path: &Path) -> bool {
    path.join("events").is_dir()
}

/// Makes sure tracefs is mounted at `path`, mounting it if not. Returns whether it mounted it.
pub fn ensure_mounted(path: &Path) -> Result<bool, TracefsError> {
    if is_mounted(path) {
        return Ok(false);
    }
    let err = |source| TracefsError::Mount {
        path: path.to_owned(),
        source,
    };
    nix::mount::mount(
        Some("nodev"),
        path,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(err)?;
    Ok(true)
}

/// Byte offset of each named field in a classic tracepoint's record, from its `format` file:
/// `\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;`.
pub fn field_offsets(
    tracefs: &Path,
    category: &str,
    name: &str,
    fields: &[&str],
) -> Result<Vec<u32>, TracefsError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Format {
        path: path.clone(),
        source,
    })?;
    fields
        .iter()
        .map(|f| {
            parse_offset(&text, f).ok_or_else(|| TracefsError::NoField {
                path: path.clone(),
                field: (*f).to_owned(),
            })
        })
        .collect()
}

fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        // The declaration ends with the name, possibly with an array suffix: `u8 saddr[4]`.
        let ident = decl.rsplit([' ', '*']).next()?;
        let ident = ident.split('[').next()?;
        if ident != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // tracefs events/sock/inet_sock_set_state/format on 6.18.
    const FORMAT: &str = "name: inet_sock_set_state
ID: 1476
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_offsets() {
        assert_eq!(parse_offset(FORMAT, "skaddr"), Some(8));
        assert_eq!(parse_offset(FORMAT, "oldstate"), Some(16));
        assert_eq!(parse_offset(FORMAT, "newstate"), Some(20));
        assert_eq!(parse_offset(FORMAT, "saddr"), Some(32));
        assert_eq!(parse_offset(FORMAT, "saddr_v6"), Some(40));
        assert_eq!(parse_offset(FORMAT, "common_pid"), Some(4));
        assert_eq!(parse_offset(FORMAT, "state"), None);
        assert_eq!(parse_offset(FORMAT, "addr"), None);
    }

    #[test]
    fn missing_format_is_an_error() {
        let err = field_offsets(Path::new("/nonexistent"), "sock", "x", &["sk"]).unwrap_err();
        assert!(matches!(err, TracefsError::Format { .. }), "{err}");
    }
}
