//! Who may look at a studio's wall: a capability token in its URL, an HMAC of the studio id
//! under `CLASSPULSE_SCREENS_KEY`. Heart rates are health data: without the studio's token a
//! request learns nothing about it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Hex digits of a token (128 bits of the HMAC).
const TOKEN_HEX: usize = 32;

/// How walls are let in.
#[derive(Clone)]
pub enum Access {
    /// By the studio's token.
    Token(Hmac<Sha256>),
    /// Without a token: only a server bound to a loopback address with no key (the embedded
    /// default on a developer's machine).
    Open,
    /// No key on an address others can reach: no wall is served.
    Closed,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Token(_) => "Token(****)",
            Access::Open => "Open",
            Access::Closed => "Closed",
        })
    }
}

impl Access {
    /// Tokens under `key`; with none, [`Access::Open`] on loopback and [`Access::Closed`]
    /// elsewhere.
    pub fn new(key: Option<&str>, loopback: bool) -> Access {
        match key {
            Some(key) => Access::Token(
                Hmac::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length"),
            ),
            None if loopback => Access::Open,
            None => Access::Closed,
        }
    }

    /// The token of `studio_id` (`None` unless tokens are in use).
    pub fn token(&self, studio_id: &str) -> Option<String> {
        let Access::Token(key) = self else {
            return None;
        };
        let mut mac = key.clone();
        mac.update(studio_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        Some(
            digest[..TOKEN_HEX / 2]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }

    /// Whether `token` lets its bearer see `studio_id`'s wall (compared in constant time).
    pub fn allows(&self, studio_id: &str, token: Option<&str>) -> bool {
        match self {
            Access::Open => true,
            Access::Closed => false,
            Access::Token(key) => {
                let Some(bytes) = token.and_then(from_hex) else {
                    return false;
                };
                let mut mac = key.clone();
                mac.update(studio_id.as_bytes());
                bytes.len() == TOKEN_HEX / 2 && mac.verify_truncated_left(&bytes).is_ok()
            }
        }
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != TOKEN_HEX || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_studio_only() {
        let access = Access::new(Some("secret"), false);
        let token = access.token("studio-1").unwrap();
        assert_eq!(token.len(), TOKEN_HEX);
        assert!(access.allows("studio-1", Some(&token)));
        assert!(!access.allows("studio-2", Some(&token)));
        assert!(!access.allows("studio-1", None));
        assert!(!access.allows("studio-1", Some(&token[..31])));
        assert!(!access.allows("studio-1", Some(&token.to_uppercase().replace('A', "g"))));
        let other = Access::new(Some("other"), false);
        assert!(!other.allows("studio-1", Some(&token)));
    }

    #[test]
    fn without_a_key_only_loopback_is_open() {
        assert!(Access::new(None, true).allows("studio-1", None));
        assert!(!Access::new(None, false).allows("studio-1", Some("x")));
        assert_eq!(Access::new(None, true).token("studio-1"), None);
    }
}
