/// Every refusal secretgate raises: its SQLSTATE and the code word its
/// message starts with (`WORD: reason`). The one table both sides share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    DecryptFailed,
    UnknownKeyVersion,
    KeyringUnavailable,
    KeyMismatch,
    ConciergeSelfWriteBlocked,
    PlatformAgentIdentityGate,
    MissingByokCredential,
    ByokCredentialInvalid,
    ForbiddenSecretKey,
    WorkspaceKindUnknown,
    InvalidModelId,
}

impl Code {
    pub const ALL: [Code; 11] = [
        Code::DecryptFailed,
        Code::UnknownKeyVersion,
        Code::KeyringUnavailable,
        Code::KeyMismatch,
        Code::ConciergeSelfWriteBlocked,
        Code::PlatformAgentIdentityGate,
        Code::MissingByokCredential,
        Code::ByokCredentialInvalid,
        Code::ForbiddenSecretKey,
        Code::WorkspaceKindUnknown,
        Code::InvalidModelId,
    ];

    /// The five-character SQLSTATE.
    pub const fn sqlstate(self) -> &'static str {
        match self {
            Code::DecryptFailed => "SG001",
            Code::UnknownKeyVersion => "SG002",
            Code::KeyringUnavailable => "SG003",
            Code::KeyMismatch => "SG004",
            Code::ConciergeSelfWriteBlocked => "SG101",
            Code::PlatformAgentIdentityGate => "SG102",
            Code::MissingByokCredential => "SG103",
            Code::ByokCredentialInvalid => "SG104",
            Code::ForbiddenSecretKey => "SG105",
            Code::WorkspaceKindUnknown => "SG106",
            Code::InvalidModelId => "SG107",
        }
    }

    /// The code word the error message starts with.
    pub const fn word(self) -> &'static str {
        match self {
            Code::DecryptFailed => "DECRYPT_FAILED",
            Code::UnknownKeyVersion => "UNKNOWN_KEY_VERSION",
            Code::KeyringUnavailable => "KEYRING_UNAVAILABLE",
            Code::KeyMismatch => "KEY_MISMATCH",
            Code::ConciergeSelfWriteBlocked => "CONCIERGE_SELF_WRITE_BLOCKED",
            Code::PlatformAgentIdentityGate => "PLATFORM_AGENT_IDENTITY_GATE",
            Code::MissingByokCredential => "MISSING_BYOK_CREDENTIAL",
            Code::ByokCredentialInvalid => "BYOK_CREDENTIAL_INVALID",
            Code::ForbiddenSecretKey => "FORBIDDEN_SECRET_KEY",
            Code::WorkspaceKindUnknown => "WORKSPACE_KIND_UNKNOWN",
            Code::InvalidModelId => "INVALID_MODEL_ID",
        }
    }

    pub fn from_sqlstate(sqlstate: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.sqlstate() == sqlstate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sqlstates_and_words_are_unique_and_well_formed() {
        let states: HashSet<_> = Code::ALL.iter().map(|c| c.sqlstate()).collect();
        let words: HashSet<_> = Code::ALL.iter().map(|c| c.word()).collect();
        assert_eq!(states.len(), Code::ALL.len());
        assert_eq!(words.len(), Code::ALL.len());
        for c in Code::ALL {
            let s = c.sqlstate();
            assert_eq!(s.len(), 5);
            assert!(s.starts_with("SG") && s[2..].chars().all(|ch| ch.is_ascii_digit()));
            assert_eq!(Code::from_sqlstate(s), Some(c));
        }
        assert_eq!(Code::from_sqlstate("XX000"), None);
    }
}
