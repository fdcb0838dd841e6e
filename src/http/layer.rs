//! [`IdempotencyLayer`]: the tower `Layer` that wraps a service in [`Idempotency`].
//!
//! Why: the layer is what a service installs (`Router::layer`, `ServiceBuilder::layer`); it
//! holds the store and the contract and checks once, at construction, that they agree.
//! Invariant: every `Idempotency` made by one layer shares its store and contract.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::contract::{Contract, ScopeFn};
use super::run::{Executor, Idle, Running, Task};
use super::service::Idempotency;
use crate::{ConfigError, Store, Terms};

/// What the layer needs from the store and the contract, shared by every service it makes.
pub(crate) struct LayerState {
    pub(crate) store: Store,
    pub(crate) contract: Contract,
    /// The stored-response limit in force: the contract's, or the store's.
    pub(crate) max_stored: usize,
    /// The terms a guarded key is held to: the contract's time to live, lease and cache
    /// policy where it sets them, the store's otherwise.
    pub(crate) terms: Terms,
    /// Where guarded calls run once started.
    pub(crate) executor: Executor,
    /// Guarded calls running now.
    pub(crate) running: Arc<Running>,
    /// The contract's scope, resolved against the store's secret.
    pub(crate) scope: ScopeFn,
}

/// A [`Contract`] that the store cannot keep.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContractError {
    /// The contract's stored-response limit is above the store's `max_response_bytes`.
    StoredResponseLimitAboveStore {
        /// The contract's limit.
        contract: usize,
        /// The store's limit.
        store: usize,
    },
    /// The contract's stored-response limit is below the smallest the store accepts, which
    /// leaves room for a response's status at least.
    StoredResponseLimitBelowFloor {
        /// The contract's limit.
        contract: usize,
        /// The smallest limit accepted.
        floor: usize,
    },
    /// The contract's time to live or lease is out of its range.
    OutOfRange(ConfigError),
}

/// The smallest stored-response limit a contract may set: the store's own floor for
/// `max_response_bytes`, room for a status and a short note's headers, so that a response too
/// large to keep always leaves its status behind (H4).
const MIN_STORED_RESPONSE: usize = 64;

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractError::StoredResponseLimitAboveStore { contract, store } => write!(
                f,
                "the contract's stored-response limit ({contract} bytes) is above the store's max_response_bytes ({store} bytes)"
            ),
            ContractError::StoredResponseLimitBelowFloor { contract, floor } => write!(
                f,
                "the contract's stored-response limit ({contract} bytes) is below {floor} bytes, the smallest that keeps a response's status"
            ),
            ContractError::OutOfRange(_) => f.write_str("the contract's terms are out of range"),
        }
    }
}

impl std::error::Error for ContractError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ContractError::OutOfRange(e) => Some(e),
            ContractError::StoredResponseLimitAboveStore { .. }
            | ContractError::StoredResponseLimitBelowFloor { .. } => None,
        }
    }
}

/// The tower layer that makes a service's writes safe to retry, on an idemstore [`Store`].
///
/// ```
/// use idemstore::http::{Contract, IdempotencyLayer};
/// use idemstore::{Config, Store};
///
/// let store = Store::in_memory(Config::default())?;
/// let layer = IdempotencyLayer::new(store, Contract::default())?;
/// // axum: Router::new().route(...).layer(layer)
/// // tower: ServiceBuilder::new().layer(layer).service(svc)
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    shared: Arc<LayerState>,
}

impl IdempotencyLayer {
    /// A layer keeping `contract` on `store`. Fails if the contract stores larger responses
    /// than the store accepts, or sets a time to live or lease out of range. The contract's
    /// time to live, lease and cache policy, where it sets them, are the ones its keys are held
    /// to, whatever the store's own (rule H21).
    pub fn new(store: Store, contract: Contract) -> Result<IdempotencyLayer, ContractError> {
        let config = store.config();
        let mut terms = config.terms();
        if let Some(policy) = contract.cache_policy {
            terms = terms.with_cache_policy(policy);
        }
        if let Some(ttl) = contract.ttl {
            terms = terms.with_ttl(ttl).map_err(ContractError::OutOfRange)?;
        }
        if let Some(lease) = contract.lease {
            terms = terms.with_lease(lease).map_err(ContractError::OutOfRange)?;
        }
        let store_max = config.max_response_bytes();
        let max_stored = contract.max_stored_response.unwrap_or(store_max);
        if max_stored > store_max {
            return Err(ContractError::StoredResponseLimitAboveStore {
                contract: max_stored,
                store: store_max,
            });
        }
        if max_stored < MIN_STORED_RESPONSE {
            return Err(ContractError::StoredResponseLimitBelowFloor {
                contract: max_stored,
                floor: MIN_STORED_RESPONSE,
            });
        }
        let scope = contract.scope.resolve(store.secret());
        Ok(IdempotencyLayer {
            shared: Arc::new(LayerState {
                store,
                contract,
                max_stored,
                terms,
                executor: Executor::default(),
                running: Arc::default(),
                scope,
            }),
        })
    }

    /// The contract this layer keeps.
    pub fn contract(&self) -> &Contract {
        &self.shared.contract
    }

    /// Runs guarded calls on `spawn` once their inner service has been called (rule H11).
    ///
    /// A server drops a request's future when its client disconnects, but an effect the
    /// handler started (a commit, an outbound call) still lands. So the layer never lets the
    /// request's future cancel a started call: it hands the rest of the call (the handler's
    /// future, then storing its response) to an executor, and the client's retry replays the
    /// stored response. By default, with the `tokio` feature, that executor is the current
    /// tokio runtime; this sets another one. The cost is one task per guarded request. A task
    /// whose client is gone ends by itself once the lease has passed (the layer's own timer
    /// thread bounds it), so `spawn` need not.
    ///
    /// ```
    /// use idemstore::http::{Contract, IdempotencyLayer};
    /// use idemstore::{Config, Store};
    /// let store = Store::in_memory(Config::default())?;
    /// // Any executor: here, a tokio runtime's handle kept from start-up.
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let handle = runtime.handle().clone();
    /// let layer = IdempotencyLayer::new(store, Contract::default())?
    ///     .spawn_with(move |task| std::mem::drop(handle.spawn(task)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_with(self, spawn: impl Fn(Task) + Send + Sync + 'static) -> Self {
        self.with_executor(Executor::Custom(Arc::new(spawn)))
    }

    /// Runs every guarded call inside its request's own future, spawning nothing. A call
    /// whose future is dropped after its handler started (the client went away) then leaves
    /// its key in flight until the store's lease ends: retries meanwhile get `409
    /// idempotency_in_progress`, and after it the operation may run again (rule H11). This
    /// is what the layer does without the `tokio` feature or outside a tokio runtime.
    pub fn run_inline(self) -> Self {
        self.with_executor(Executor::Inline)
    }

    fn with_executor(self, executor: Executor) -> Self {
        let shared = &self.shared;
        IdempotencyLayer {
            shared: Arc::new(LayerState {
                store: shared.store.clone(),
                contract: shared.contract.clone(),
                max_stored: shared.max_stored,
                terms: shared.terms,
                executor,
                running: Arc::clone(&shared.running),
                scope: Arc::clone(&shared.scope),
            }),
        }
    }

    /// Guarded calls running now, from the store's `Execute` to their stored response,
    /// those whose client went away included.
    pub fn running(&self) -> usize {
        self.shared.running.count()
    }

    /// A future that resolves once no guarded call is running: await it (with a deadline)
    /// after a server's graceful shutdown and before [`Store::close`], so handlers whose
    /// clients went away finish and store their responses.
    pub fn idle(&self) -> Idle {
        self.shared.running.idle()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency::from_shared(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.shared.store)
            .field("contract", &self.shared.contract)
            .finish()
    }
}
