//! Routers keyed by name. A router is created explicitly (Admin.CreateRouter) or, when
//! the server allows it, on first use with the server's default settings.
//!
//! Locking: the map is behind an `RwLock` taken only to find, add or remove a router;
//! each router has its own `Mutex`, so routers never wait on each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{Router, RouterError, RouterSettings};

/// Longest router name accepted.
pub const MAX_ROUTER_NAME_LEN: usize = 128;

pub type SharedRouter = Arc<Mutex<Router>>;

pub struct Routers {
    defaults: RouterSettings,
    create_on_first_use: bool,
    max_context_dim: usize,
    routers: RwLock<BTreeMap<String, SharedRouter>>,
}

impl Routers {
    pub fn new(
        defaults: RouterSettings,
        create_on_first_use: bool,
        max_context_dim: usize,
    ) -> Self {
        Self {
            defaults,
            create_on_first_use,
            max_context_dim,
            routers: RwLock::new(BTreeMap::new()),
        }
    }

    /// The settings a router gets when a field is left unset.
    pub fn defaults(&self) -> &RouterSettings {
        &self.defaults
    }

    pub fn max_context_dim(&self) -> usize {
        self.max_context_dim
    }

    pub fn get(&self, name: &str) -> Result<SharedRouter, RouterError> {
        self.routers
            .read()
            .expect("router map lock poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| RouterError::UnknownRouter {
                name: name.to_string(),
            })
    }

    /// The named router, created with the default settings (and an arm per RM in
    /// `serving`) if it does not exist and the server creates routers on first use.
    pub fn get_or_create(
        &self,
        name: &str,
        serving: &[String],
    ) -> Result<SharedRouter, RouterError> {
        match self.get(name) {
            Err(RouterError::UnknownRouter { .. }) if self.create_on_first_use => {
                validate_name(name)?;
                let mut routers = self.routers.write().expect("router map lock poisoned");
                Ok(routers
                    .entry(name.to_string())
                    .or_insert_with(|| {
                        tracing::info!(router = name, "router created on first use");
                        Arc::new(Mutex::new(Router::new(
                            name.to_string(),
                            self.defaults.clone(),
                            serving,
                        )))
                    })
                    .clone())
            }
            other => other,
        }
    }

    /// A new router with an arm for every RM in `serving` that `settings` accept.
    pub fn create(
        &self,
        name: &str,
        settings: RouterSettings,
        serving: &[String],
    ) -> Result<SharedRouter, RouterError> {
        validate_name(name)?;
        let settings = settings.validate(self.max_context_dim)?;
        let mut routers = self.routers.write().expect("router map lock poisoned");
        if routers.contains_key(name) {
            return Err(RouterError::RouterExists {
                name: name.to_string(),
            });
        }
        let router = Arc::new(Mutex::new(Router::new(name.to_string(), settings, serving)));
        routers.insert(name.to_string(), router.clone());
        Ok(router)
    }

    pub fn delete(&self, name: &str) -> Result<(), RouterError> {
        self.routers
            .write()
            .expect("router map lock poisoned")
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RouterError::UnknownRouter {
                name: name.to_string(),
            })
    }

    /// All routers, by name.
    pub fn list(&self) -> Vec<SharedRouter> {
        self.routers
            .read()
            .expect("router map lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}

fn validate_name(name: &str) -> Result<(), RouterError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_ROUTER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(RouterError::InvalidRouterName {
            name: name.chars().take(MAX_ROUTER_NAME_LEN + 8).collect(),
            max: MAX_ROUTER_NAME_LEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routers::tests::settings;

    fn routers(create_on_first_use: bool) -> Routers {
        Routers::new(settings(4), create_on_first_use, 1024)
    }

    #[test]
    fn first_use_creates_only_when_allowed() {
        assert!(routers(true).get_or_create("run-1", &[]).is_ok());
        assert_eq!(
            routers(false).get_or_create("run-1", &[]).err(),
            Some(RouterError::UnknownRouter {
                name: "run-1".into()
            })
        );
    }

    #[test]
    fn names_are_validated() {
        let routers = routers(true);
        assert!(matches!(
            routers.get_or_create("bad name", &[]),
            Err(RouterError::InvalidRouterName { .. })
        ));
        assert!(matches!(
            routers.get_or_create(&"x".repeat(200), &[]),
            Err(RouterError::InvalidRouterName { .. })
        ));
        assert!(routers.list().is_empty());
    }

    #[test]
    fn create_get_delete() {
        let routers = routers(false);
        let settings = routers.defaults().clone();
        routers.create("a", settings.clone(), &[]).unwrap();
        assert_eq!(
            routers.create("a", settings.clone(), &[]).err(),
            Some(RouterError::RouterExists { name: "a".into() })
        );
        assert!(routers.get("a").is_ok());
        assert_eq!(routers.list().len(), 1);
        routers.delete("a").unwrap();
        assert!(routers.get("a").is_err());
        let bad = RouterSettings {
            context_dim: 0,
            ..settings
        };
        assert!(matches!(
            routers.create("b", bad, &[]),
            Err(RouterError::InvalidSettings {
                field: "context_dim",
                ..
            })
        ));
    }
}
