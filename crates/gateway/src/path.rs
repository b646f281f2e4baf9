//! The request path, canonicalised once before routing, so that routing, `http_path` policy
//! rules and the upstream all see the same path (RFC 3986 §6.2.2).
//!
//! Without it, `/pub/../admin` matched the public `/pub` route while the upstream resolved it to
//! `/admin`, and `deny: http_path starts_with /app/secret` missed `/app//secret`.

use std::borrow::Cow;

/// A path the gateway refuses to guess about: an encoded separator or dot segment, or a
/// backslash (some servers read `\` or `%2F` as `/`, others don't).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C`, `\`, a dot segment written with `%2E` (or followed by `;` or an escape),
    /// or one of those escaped twice (`%252F`).
    #[error("the path contains an encoded '/', '\\' or '.' segment; send the plain path")]
    AmbiguousSegment,
    /// Not an absolute path (`*`, authority-form).
    #[error("the request target must be an absolute path starting with '/'")]
    NotAbsolute,
}

/// The canonical form of `path`: percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// decoded and other escapes in upper case (RFC 3986 §6.2.2.1-2), repeated slashes merged, dot
/// segments removed (§5.2.4; `..` never climbs above `/`).
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Almost every request: nothing to do, no allocation.
    if !path.bytes().any(|b| matches!(b, b'%' | b'.' | b'\\')) && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(PathError::AmbiguousSegment);
    }
    let raw: Vec<&str> = path[1..].split('/').collect();
    let mut segments: Vec<String> = Vec::with_capacity(raw.len());
    let mut trailing_slash = false;
    for (i, written) in raw.iter().enumerate() {
        let is_last = i + 1 == raw.len();
        let (segment, encoded_dot) = decode_segment(written)?;
        let dots = segment.split([';', '%']).next().unwrap_or("");
        if (dots == "." || dots == "..") && (encoded_dot || segment.len() != dots.len()) {
            // `%2e%2e`, `..;x` or `..%3B`, `..%00`: servers differ on whether that climbs
            // (Tomcat's `..;/` does; a C server stops at the NUL).
            return Err(PathError::AmbiguousSegment);
        }
        match segment.as_str() {
            // Repeated slashes merge; a final empty segment is the trailing slash.
            "" | "." => trailing_slash = is_last,
            ".." => {
                segments.pop();
                trailing_slash = is_last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// One segment with unreserved escapes decoded and the others upper-cased; whether a `.` came
/// from an escape.
fn decode_segment(raw: &str) -> Result<(String, bool), PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        let Some(value) = escaped else {
            if bytes[i] == b'%' {
                // A stray `%`, which the URI parser let through, written as the `%25` it means:
                // left bare, it would join the decoded characters after it into a new escape
                // (`/%%361dmin` would become `/%61dmin`, which the upstream reads as `/admin`).
                out.extend_from_slice(b"%25");
            } else {
                out.push(bytes[i]);
            }
            i += 1;
            continue;
        };
        match value {
            b'/' | b'\\' => return Err(PathError::AmbiguousSegment),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded_dot |= value == b'.';
                out.push(value);
            }
            _ => out.extend_from_slice(&[
                b'%',
                HEX[usize::from(value >> 4)],
                HEX[usize::from(value & 0xf)],
            ]),
        }
        i += 3;
    }
    // `%252F`, `%255C`, `%252E`: a server that decodes twice (some proxies and frameworks do)
    // reads a separator or a dot segment the gateway did not see.
    if out.windows(5).any(|w| {
        w[..3] == *b"%25"
            && matches!(
                [w[3].to_ascii_uppercase(), w[4].to_ascii_uppercase()],
                [b'2', b'F' | b'E'] | [b'5', b'C']
            )
    }) {
        return Err(PathError::AmbiguousSegment);
    }
    // Only ASCII was decoded into a valid UTF-8 string: still valid.
    let out = String::from_utf8(out).map_err(|_| PathError::AmbiguousSegment)?;
    Ok((out, encoded_dot))
}

#[cfg(test)]
mod tests;
