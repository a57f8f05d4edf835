//! Encryption of secrets at rest (AES-256-GCM) under keys from configuration, each ciphertext
//! tagged with the id of its key so keys can be rotated.

use std::{collections::HashMap, fs, io::Write, path::Path};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::{
    ServerId,
    server::{NewSecrets, Sealed, Secret, StoredSecrets},
};

const NONCE_LENGTH: usize = 12;
const KEY_FILE: &str = "secrets.key";

/// Why secrets could not be sealed, opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets key is not base64 of 32 bytes")]
    BadKey,
    #[error("secret was sealed with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("secret could not be decrypted: wrong key or corrupted ciphertext")]
    Corrupt,
    #[error("secrets key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
}

/// What a key check value seals, and the context it is bound to.
const KEY_CHECK: &str = "dbtrail-servers secrets key check";
const KEY_CHECK_CONTEXT: &str = "secrets-key-check";

/// The configured keys: one that seals, all that open.
#[derive(Clone)]
pub struct SecretBox {
    primary_id: String,
    ciphers: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SecretBox(primary key {})", self.primary_id)
    }
}

fn decode_key(text: &str) -> Result<[u8; 32], SecretsError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| SecretsError::BadKey)?;
    bytes.try_into().map_err(|_| SecretsError::BadKey)
}

/// A key's id: a prefix of its SHA-256, so it says which key sealed what without revealing it.
fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..8])
}

impl SecretBox {
    /// Keys from base64 text: the primary, then older ones kept for opening.
    pub fn from_keys(primary: &str, older: &[String]) -> Result<SecretBox, SecretsError> {
        let primary = decode_key(primary)?;
        let primary_id = key_id(&primary);
        let mut ciphers = HashMap::new();
        for key in std::iter::once(Ok(primary)).chain(older.iter().map(|text| decode_key(text))) {
            let key = key?;
            ciphers.insert(key_id(&key), Aes256Gcm::new(&key.into()));
        }
        Ok(SecretBox {
            primary_id,
            ciphers,
        })
    }

    /// The configured key, or the one kept in `data_dir` (created, mode 0600, when absent).
    /// Returns whether a key was generated, so the caller can warn.
    pub fn from_config_or_file(
        configured: Option<&str>,
        older: &[String],
        data_dir: &Path,
    ) -> Result<(SecretBox, bool), SecretsError> {
        if let Some(key) = configured {
            return Ok((SecretBox::from_keys(key, older)?, false));
        }
        let path = data_dir.join(KEY_FILE);
        let file_error = |source| SecretsError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => Ok((SecretBox::from_keys(&text, older)?, false)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(file_error)?;
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                let text = STANDARD.encode(key);
                write_private_file(&path, &text).map_err(file_error)?;
                Ok((SecretBox::from_keys(&text, older)?, true))
            }
            Err(error) => Err(file_error(error)),
        }
    }

    /// Encrypts a secret under the primary key, bound to `context` (e.g. the server id and field).
    pub fn seal(&self, secret: &Secret, context: &str) -> Sealed {
        let cipher = &self.ciphers[&self.primary_id];
        let mut nonce = [0u8; NONCE_LENGTH];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.0.as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption with a fresh nonce and an in-memory buffer cannot fail.
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Sealed {
            key_id: self.primary_id.clone(),
            ciphertext: sealed,
        }
    }

    /// A server's secrets after a request: the new ones sealed, each bound to the server and
    /// its field so that sealed values cannot be swapped around; the others as stored.
    pub fn seal_server_secrets(
        &self,
        server_id: ServerId,
        current: &StoredSecrets,
        new: &NewSecrets,
    ) -> StoredSecrets {
        let seal = |secret: &Option<Secret>, stored: &Option<Sealed>, field: &str| match secret {
            Some(secret) => Some(self.seal(secret, &format!("{server_id}/{field}"))),
            None => stored.clone(),
        };
        StoredSecrets {
            mysql_password: seal(
                &new.mysql_password,
                &current.mysql_password,
                "mysql_password",
            ),
            ssh_private_key: seal(
                &new.ssh_private_key,
                &current.ssh_private_key,
                "ssh_private_key",
            ),
        }
    }

    /// The id of the key that seals.
    pub fn primary_key_id(&self) -> &str {
        &self.primary_id
    }

    /// The ids of every key this box opens with: the primary and the older ones.
    pub fn key_ids(&self) -> Vec<String> {
        self.ciphers.keys().cloned().collect()
    }

    /// A known constant sealed under the primary key: stored by the first replica, it tells a
    /// later replica whether it holds the deployment's key.
    pub fn key_check(&self) -> Sealed {
        self.seal(&Secret(KEY_CHECK.to_owned()), KEY_CHECK_CONTEXT)
    }

    /// Whether one of this replica's keys opens a check value made by `key_check`.
    pub fn opens_key_check(&self, sealed: &Sealed) -> bool {
        self.open(sealed, KEY_CHECK_CONTEXT)
            .is_ok_and(|secret| secret.0 == KEY_CHECK)
    }

    /// Decrypts a secret sealed by `seal` with the same context.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Secret, SecretsError> {
        let cipher = self
            .ciphers
            .get(&sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.ciphertext.len() < NONCE_LENGTH {
            return Err(SecretsError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.ciphertext.split_at(NONCE_LENGTH);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SecretsError::Corrupt)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| SecretsError::Corrupt)
    }
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        STANDARD.encode([7u8; 32])
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let secrets = SecretBox::from_keys(&key(), &[]).unwrap();
        let sealed = secrets.seal(
            &Secret("hunter2-password".into()),
            "server-1/mysql_password",
        );
        assert!(
            !sealed
                .ciphertext
                .windows(6)
                .any(|window| window == b"hunter")
        );
        let opened = secrets.open(&sealed, "server-1/mysql_password").unwrap();
        assert_eq!(opened, Secret("hunter2-password".into()));
        assert!(matches!(
            secrets.open(&sealed, "server-2/mysql_password"),
            Err(SecretsError::Corrupt)
        ));
    }

    #[test]
    fn rotated_keys_still_open_old_secrets() {
        let old = SecretBox::from_keys(&key(), &[]).unwrap();
        let sealed = old.seal(&Secret("pw".into()), "ctx");
        let new_key = STANDARD.encode([9u8; 32]);
        let rotated = SecretBox::from_keys(&new_key, &[key()]).unwrap();
        assert_eq!(rotated.open(&sealed, "ctx").unwrap(), Secret("pw".into()));
        let without_old = SecretBox::from_keys(&new_key, &[]).unwrap();
        assert!(matches!(
            without_old.open(&sealed, "ctx"),
            Err(SecretsError::UnknownKey(_))
        ));
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let (first, generated) =
            SecretBox::from_config_or_file(None, &[], directory.path()).unwrap();
        assert!(generated);
        let mode = fs::metadata(directory.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, generated) =
            SecretBox::from_config_or_file(None, &[], directory.path()).unwrap();
        assert!(!generated);
        let sealed = first.seal(&Secret("x".into()), "c");
        assert_eq!(second.open(&sealed, "c").unwrap(), Secret("x".into()));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            SecretBox::from_keys("short", &[]),
            Err(SecretsError::BadKey)
        ));
    }
}
