//! The static token file (`--token-auth-file`, as kube-apiserver's): one bearer token per line,
//! `token,user,uid,"group1,group2"` (the groups column optional). Read once at start-up.

use std::collections::HashMap;
use std::path::Path;

use super::auth::UserInfo;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected token,user,uid[,\"groups\"]")]
    Malformed { path: String, line: usize },
}

#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    users: HashMap<String, UserInfo>,
}

/// Splits one CSV line, honouring double quotes (the groups column holds commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

impl StaticTokens {
    pub fn parse(text: &str, path: &str) -> Result<Self, TokenFileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(TokenFileError::Malformed {
                    path: path.to_string(),
                    line: i + 1,
                });
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            users.insert(f[0].clone(), UserInfo::authenticated(f[1].clone(), groups));
        }
        Ok(StaticTokens { users })
    }

    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn user(&self, token: &str) -> Option<&UserInfo> {
        self.users.get(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_groups() {
        let tokens = StaticTokens::parse(
            "# comment\nabc,alice,1,\"dev,ops\"\ndef,bob,2\n",
            "tokens.csv",
        )
        .expect("parsed");
        let alice = tokens.user("abc").expect("alice");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, vec!["dev", "ops", "system:authenticated"]);
        assert_eq!(
            tokens.user("def").expect("bob").groups,
            vec!["system:authenticated"]
        );
        assert!(tokens.user("nope").is_none());
        assert!(StaticTokens::parse("onlytoken\n", "t").is_err());
    }
}
