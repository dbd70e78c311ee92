//! Service account issuer discovery, as kube-apiserver serves it:
//! `/.well-known/openid-configuration` (the issuer, where its keys are,
//! which algorithms) and `/openid/v1/jwks` (the public keys that verify
//! service account tokens, as JWKs with Kubernetes' key ids), so other
//! systems can check this cluster's tokens. Who may read them is RBAC's
//! business (`system:service-account-issuer-discovery`, bound to
//! `system:serviceaccounts`).

use base64::Engine;
use serde_json::{json, Value};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Big-endian integer bytes without leading zeros.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The JWK of a public key (SPKI DER), with key id `kid`; `None` for key
/// types tokens are not signed with.
pub fn jwk(spki_der: &[u8], kid: &str) -> Option<Value> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => Some(json!({
            "use": "sig",
            "kty": "RSA",
            "kid": kid,
            "alg": "RS256",
            "n": b64(unsigned(rsa.modulus)),
            "e": b64(unsigned(rsa.exponent)),
        })),
        PublicKey::EC(point) => {
            let data = point.data();
            let coords = data.strip_prefix(&[4u8])?;
            let half = coords.len() / 2;
            let (crv, alg) = match half {
                32 => ("P-256", "ES256"),
                48 => ("P-384", "ES384"),
                _ => return None,
            };
            Some(json!({
                "use": "sig",
                "kty": "EC",
                "kid": kid,
                "crv": crv,
                "alg": alg,
                "x": b64(&coords[..half]),
                "y": b64(&coords[half..]),
            }))
        }
        _ => None,
    }
}

/// The discovery document.
pub fn discovery(issuer: &str, jwks_uri: &str, algorithms: &[String]) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_keys_become_jwks() {
        let key = rcgen::KeyPair::generate().expect("key");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let j = jwk(&spki, "k1").expect("jwk");
        assert_eq!(
            (
                j["kty"].as_str(),
                j["crv"].as_str(),
                j["alg"].as_str(),
                j["kid"].as_str()
            ),
            (Some("EC"), Some("P-256"), Some("ES256"), Some("k1"))
        );
        assert_eq!(j["x"].as_str().map(str::len), Some(43));
        assert_eq!(j["y"].as_str().map(str::len), Some(43));
        assert!(jwk(b"junk", "k").is_none());
        let d = discovery("https://i", "https://h/openid/v1/jwks", &["ES256".into()]);
        assert_eq!(d["id_token_signing_alg_values_supported"][0], "ES256");
    }

    #[test]
    fn leading_zeros_go() {
        assert_eq!(unsigned(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(unsigned(&[0]), &[] as &[u8]);
    }
}
