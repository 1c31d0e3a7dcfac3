//! Liveness verdicts: what a provider's answer to an authenticated request
//! says about the credential, and the digest that binds a verdict to one
//! ciphertext (a rotated credential starts with no verdict).

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider accepted the credential (or answered something that is not a refusal).
    Ok,
    /// 401 or 403: the credential is known dead.
    Dead,
    /// No answer (0), 429 or 5xx: nothing is known; allowed, logged loudly.
    Transient,
}

impl Verdict {
    /// 401/403 → dead; 0 (no answer), 429, 5xx → transient; anything else → ok.
    pub fn classify(http_status: i32) -> Verdict {
        match http_status {
            401 | 403 => Verdict::Dead,
            0 | 429 | 500..=599 => Verdict::Transient,
            _ => Verdict::Ok,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Dead => "dead",
            Verdict::Transient => "transient",
        }
    }
}

/// SHA-256 of a stored ciphertext: names one version of a credential
/// without revealing anything about it.
pub fn ciphertext_digest(encrypted_value: &[u8]) -> Vec<u8> {
    Sha256::digest(encrypted_value).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_class_of_answer() {
        for (status, want) in [
            (401, Verdict::Dead),
            (403, Verdict::Dead),
            (0, Verdict::Transient),
            (429, Verdict::Transient),
            (500, Verdict::Transient),
            (503, Verdict::Transient),
            (599, Verdict::Transient),
            (200, Verdict::Ok),
            (404, Verdict::Ok),
            (400, Verdict::Ok),
            (600, Verdict::Ok),
        ] {
            assert_eq!(Verdict::classify(status), want, "status {status}");
        }
        assert_eq!(Verdict::Dead.as_str(), "dead");
    }

    #[test]
    fn digest_changes_with_the_ciphertext() {
        assert_eq!(ciphertext_digest(b"a").len(), 32);
        assert_ne!(ciphertext_digest(b"a"), ciphertext_digest(b"b"));
    }
}
