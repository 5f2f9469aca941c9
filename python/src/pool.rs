//! `WorkerPool`: the forked workers, shared by any number of readers, and
//! the module-wide default pools readers use when given none.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use pyo3::prelude::*;
use shmfetch::{PoolConfig, WorkerPool};

use crate::errors::{OrRaise, invalid};
use crate::fork::Owned;
use crate::options::seconds;

/// A set of worker processes, forked once and shared by any number of
/// readers, uploads and checkpoint loads (also at the same time).
///
/// Create it early, before the process grows large (each fork copies the
/// page tables), and in the process that uses it: a pool cannot be used
/// after ``os.fork()`` (the child gets ``PoolError``). Its workers end when
/// the last reader using it is gone and the pool is closed or collected.
///
/// >>> pool = shmfetch.WorkerPool(8)
/// >>> r = shmfetch.ParallelReader("ais://bucket/obj", pool=pool)
#[pyclass(name = "WorkerPool", module = "shmfetch", frozen)]
pub struct PyPool {
    pub(crate) pool: Mutex<Option<Owned<WorkerPool>>>,
}

impl PyPool {
    pub fn wrap(pool: WorkerPool) -> PyPool {
        PyPool {
            pool: Mutex::new(Some(Owned::new(pool))),
        }
    }

    /// A handle to the pool (cheap: pools are shared).
    pub fn handle(&self, py: Python<'_>) -> PyResult<WorkerPool> {
        let guard = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(p) => p.get(py, "WorkerPool").cloned(),
            None => Err(crate::errors::to_py(
                py,
                shmfetch::Error::Pool("the WorkerPool is closed".into()),
            )),
        }
    }
}

#[pymethods]
impl PyPool {
    /// Forks `workers` worker processes (1 to 256).
    ///
    /// `read_timeout` and `connect_timeout` (seconds) apply to the workers'
    /// HTTP connections; `recycle_bytes` keeps up to that many bytes of
    /// released ``read_all`` buffers for the next ``read_all`` of a fitting
    /// size (0, the default, returns each to the system at once).
    #[new]
    #[pyo3(signature = (workers = shmfetch::worker::DEFAULT_WORKERS, *, read_timeout = None, connect_timeout = None, recycle_bytes = 0))]
    fn new(
        py: Python<'_>,
        workers: usize,
        read_timeout: Option<f64>,
        connect_timeout: Option<f64>,
        recycle_bytes: u64,
    ) -> PyResult<PyPool> {
        let max = shmfetch::worker::MAX_WORKERS;
        if workers == 0 || workers > max {
            return Err(invalid(
                py,
                format!("workers must be between 1 and {max}, got {workers}"),
            ));
        }
        let mut cfg = PoolConfig {
            workers,
            recycle_bytes,
            ..PoolConfig::default()
        };
        if let Some(t) = read_timeout {
            cfg.http.read_timeout = seconds(py, t, "read_timeout")?;
        }
        if let Some(t) = connect_timeout {
            cfg.http.connect_timeout = seconds(py, t, "connect_timeout")?;
        }
        let pool = py.detach(|| WorkerPool::with_config(cfg)).or_raise(py)?;
        Ok(PyPool::wrap(pool))
    }

    /// Number of worker processes.
    #[getter]
    fn workers(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.workers())
    }

    /// Process ids of the workers.
    #[getter]
    fn worker_pids(&self, py: Python<'_>) -> PyResult<Vec<i32>> {
        Ok(self.handle(py)?.worker_pids())
    }

    /// Stops using the pool here. Its workers end once no reader, buffer
    /// or upload made with it remains. Using the pool afterwards raises
    /// ``PoolError``.
    fn close(&self) {
        let taken = self.pool.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) {
        self.close();
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.handle(py) {
            Ok(p) => format!(
                "WorkerPool(workers={}, pids={:?})",
                p.workers(),
                p.worker_pids()
            ),
            Err(_) => "WorkerPool(closed)".to_string(),
        }
    }
}

/// The default pools, one per worker count, of this process.
fn defaults() -> &'static Mutex<Owned<HashMap<usize, WorkerPool>>> {
    static POOLS: OnceLock<Mutex<Owned<HashMap<usize, WorkerPool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(Owned::new(HashMap::new())))
}

/// The module-wide pool of `workers` workers, forked on first use. In a
/// child of ``os.fork()`` the parent's pools are left alone and the child
/// forks its own.
pub fn default_pool(py: Python<'_>, workers: usize) -> PyResult<WorkerPool> {
    let max = shmfetch::worker::MAX_WORKERS;
    if workers == 0 || workers > max {
        return Err(invalid(
            py,
            format!("workers must be between 1 and {max}, got {workers}"),
        ));
    }
    py.detach(|| {
        let mut guard = defaults().lock().unwrap_or_else(|e| e.into_inner());
        if !guard.is_ours() {
            // A forked child: forget the parent's pools (Owned's drop leaks them).
            *guard = Owned::new(HashMap::new());
        }
        let map = guard
            .inner_mut()
            .ok_or_else(|| shmfetch::Error::Pool("the default pools are gone".into()))?;
        if let Some(p) = map.get(&workers) {
            return Ok(p.clone());
        }
        let pool = WorkerPool::new(workers)?;
        map.insert(workers, pool.clone());
        Ok(pool)
    })
    .or_raise(py)
}

/// The module-wide pool of ``workers`` workers that readers given no
/// ``pool`` use, forked on first use and kept for the life of the process.
#[pyfunction(name = "default_pool")]
#[pyo3(signature = (workers = shmfetch::worker::DEFAULT_WORKERS))]
pub fn py_default_pool(py: Python<'_>, workers: usize) -> PyResult<PyPool> {
    Ok(PyPool::wrap(default_pool(py, workers)?))
}

/// Forgets the module-wide default pools: their workers end once no reader
/// still uses them. The next reader without a pool forks a new one.
#[pyfunction]
pub fn close_default_pools(py: Python<'_>) {
    py.detach(|| {
        let mut guard = defaults().lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_ours() {
            if let Some(map) = guard.inner_mut() {
                let old = std::mem::take(map);
                drop(old);
            }
        } else {
            *guard = Owned::new(HashMap::new());
        }
    })
}

/// The pool a reader or file system runs on: `pool` if given (then
/// `workers`, if given too, must match it), else the module-wide default
/// pool of `workers` workers.
pub fn choose(
    py: Python<'_>,
    pool: Option<&PyPool>,
    workers: Option<usize>,
) -> PyResult<WorkerPool> {
    match pool {
        Some(p) => {
            let p = p.handle(py)?;
            if let Some(w) = workers
                && w != p.workers()
            {
                return Err(invalid(
                    py,
                    format!(
                        "workers={w} but the pool given has {} workers; leave workers out when passing a pool",
                        p.workers()
                    ),
                ));
            }
            Ok(p)
        }
        None => default_pool(py, workers.unwrap_or(shmfetch::worker::DEFAULT_WORKERS)),
    }
}
