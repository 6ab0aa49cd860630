//! Bearer-token authentication. Every request carries `Authorization: Bearer <token>`;
//! the token is compared in constant time (its length may leak, its content must not).

use alloc::string::String;

/// Longest token accepted (at boot or in a request).
pub const TOKEN_MAX_LEN: usize = 256;

/// The API token: 1 to 256 visible ASCII characters (no spaces).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// `None` if `token` is empty, too long, or has characters other than visible ASCII.
    #[must_use]
    pub fn new(token: &str) -> Option<Self> {
        let valid =
            !token.is_empty() && token.len() <= TOKEN_MAX_LEN && token.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| Self(String::from(token)))
    }

    /// Whether an `Authorization` header value carries this token. The scheme is matched
    /// without regard to case (RFC 9110 §11.1), the token exactly and in constant time.
    #[must_use]
    pub fn authorizes(&self, header: &[u8]) -> bool {
        let Some(space) = header.iter().position(|&b| b == b' ') else { return false };
        let (scheme, rest) = header.split_at(space);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        constant_time_eq(trim_spaces(rest), self.0.as_bytes())
    }
}

impl core::fmt::Debug for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Token(..)")
    }
}

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `a == b`, taking the same time for every content of equal-length inputs: every byte
/// pair is compared, differences are OR-ed together, and the result is hidden from the
/// optimizer so it cannot stop at the first difference.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= core::hint::black_box(x ^ y);
    }
    core::hint::black_box(diff) == 0
}
