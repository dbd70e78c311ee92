//! Static bearer tokens from `--token-auth-file`, in kube-apiserver's CSV
//! format: `token,user,uid[,"group1,group2"]`, one user a line. Fields may
//! be double-quoted (a quoted field may hold commas; `""` is a quote).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::auth::User;

/// Errors reading a token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a valid record.
    #[error("token file {path}, line {line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The users of a token file, by token.
#[derive(Default, Clone)]
pub struct TokenFile {
    users: HashMap<String, User>,
}

impl std::fmt::Debug for TokenFile {
    /// Never prints the tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({} users)", self.users.len())
    }
}

impl TokenFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<TokenFile, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| TokenFileError::Line {
            path: path.to_path_buf(),
            line,
            why,
        })
    }

    /// Parses the file's text; an error names the line (1-based) and why.
    pub fn parse(text: &str) -> Result<TokenFile, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields = split_csv(line).map_err(|why| (n, why))?;
            if fields.len() < 3 {
                return Err((
                    n,
                    format!(
                        "expected at least 3 fields (token,user,uid), got {}",
                        fields.len()
                    ),
                ));
            }
            let token = fields[0].trim().to_string();
            let name = fields[1].trim().to_string();
            if token.is_empty() || name.is_empty() {
                return Err((n, "the token and the user name must not be empty".into()));
            }
            let groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if users.contains_key(&token) {
                tracing::warn!(
                    line = n,
                    "duplicate token in the token file; the last one wins"
                );
            }
            users.insert(token, User::authenticated(name, fields[2].trim(), groups));
        }
        Ok(TokenFile { users })
    }

    /// The user of `token`, if it is in the file.
    pub fn user(&self, token: &str) -> Option<User> {
        self.users.get(token).cloned()
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if the file holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Splits one CSV record (RFC 4180 quoting).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                    match chars.peek() {
                        None | Some(',') => {}
                        Some(other) => {
                            return Err(format!("unexpected {other:?} after a closing quote"))
                        }
                    }
                }
            }
            '"' if at_start => quoted = true,
            ',' if !quoted => {
                fields.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            c => cur.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_token_files() {
        let f =
            TokenFile::parse("t1,alice,uid-a,\"devs,ops\"\n\nt2,bob,uid-b\nt3,carol,uid-c,qa\n")
                .expect("parse");
        assert_eq!(f.len(), 3);
        let a = f.user("t1").expect("alice");
        assert_eq!(a.name, "alice");
        assert_eq!(a.uid, "uid-a");
        assert_eq!(a.groups, ["devs", "ops", "system:authenticated"]);
        assert!(a.authenticated);
        assert_eq!(f.user("t2").expect("bob").groups, ["system:authenticated"]);
        assert_eq!(
            f.user("t3").expect("carol").groups,
            ["qa", "system:authenticated"]
        );
        assert!(f.user("nope").is_none());
    }

    #[test]
    fn bad_lines_name_the_line() {
        assert_eq!(
            TokenFile::parse("t1,alice,u1\nt2,bob\n")
                .expect_err("short")
                .0,
            2
        );
        assert_eq!(
            TokenFile::parse("t1,alice,u1,\"devs\n")
                .expect_err("quote")
                .0,
            1
        );
        assert_eq!(TokenFile::parse(",alice,u1\n").expect_err("empty").0, 1);
    }

    #[test]
    fn quotes_escape_quotes() {
        assert_eq!(
            split_csv(r#"a,"b ""x"", c",d"#).expect("csv"),
            ["a", "b \"x\", c", "d"]
        );
    }
}
