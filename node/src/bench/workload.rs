//! What the bench sends: the key space (`key0` … `keyN-1`), which key each
//! request picks (uniform, or zipfian for a hot set) and whether it is a
//! READ or a WRITE. Pure functions of a random
//! number generator, so the mix can be checked without a cluster.

use anyhow::bail;
use rand::Rng;
use rand_distr::{Distribution as _, Zipf};
use serde::{Deserialize, Serialize};

/// How keys are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely (the default).
    Uniform,
    /// Key `i` picked with probability proportional to `1 / (i+1)^s`:
    /// a few hot keys, as in most real workloads.
    Zipfian,
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        })
    }
}

/// A request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// READ of a key.
    Read,
    /// WRITE of a key.
    Write,
}

impl Op {
    /// Both kinds, in report order.
    pub const ALL: [Op; 2] = [Op::Read, Op::Write];

    /// The `op` label and JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// The parameters of a workload, as given on the command line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Number of distinct keys.
    pub keys: usize,
    /// Fraction of requests that are WRITEs, in [0, 1].
    pub write_ratio: f64,
    /// How keys are picked.
    pub distribution: Distribution,
    /// Exponent `s` of the zipfian distribution (ignored for uniform).
    pub zipf_exponent: f64,
    /// Bytes of every written value.
    pub value_size: usize,
}

/// Key picker: the zipf sampler is built once, it precomputes constants.
#[derive(Debug, Clone)]
enum Chooser {
    Uniform,
    Zipfian(Zipf<f64>),
}

/// A ready-to-use workload: keys rendered once, one value buffer, the key
/// picker. Shared read-only by every client task.
#[derive(Debug, Clone)]
pub struct Workload {
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
    write_ratio: f64,
    chooser: Chooser,
}

impl Workload {
    /// Checks `spec` and prepares the key space.
    ///
    /// # Errors
    /// No keys, a write ratio outside [0, 1], or a zipf exponent that is not
    /// positive and finite.
    pub fn new(spec: &WorkloadSpec) -> anyhow::Result<Workload> {
        if spec.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if !(0.0..=1.0).contains(&spec.write_ratio) {
            bail!(
                "--write-ratio must be between 0 and 1, not {}",
                spec.write_ratio
            );
        }
        let chooser = match spec.distribution {
            Distribution::Uniform => Chooser::Uniform,
            Distribution::Zipfian => {
                if !(spec.zipf_exponent.is_finite() && spec.zipf_exponent > 0.0) {
                    bail!(
                        "--zipf-exponent must be a positive number, not {}",
                        spec.zipf_exponent
                    );
                }
                let zipf = Zipf::new(spec.keys as f64, spec.zipf_exponent)
                    .map_err(|e| anyhow::anyhow!("zipf distribution: {e}"))?;
                Chooser::Zipfian(zipf)
            }
        };
        // Printable bytes, so `dsm client get` shows a bench value plainly.
        let value = (0..spec.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        Ok(Workload {
            keys: (0..spec.keys).map(|i| key_name(i).into_bytes()).collect(),
            value,
            write_ratio: spec.write_ratio,
            chooser,
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a workload has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The bytes of key `index` (`key{index}`); indexes wrap around.
    pub fn key(&self, index: usize) -> &[u8] {
        &self.keys[index % self.keys.len()]
    }

    /// The value every WRITE sends.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Picks the next request: its kind and key index (in `0..len()`).
    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> (Op, usize) {
        // `random_bool` panics outside [0, 1]; `new` checked the ratio.
        let op = if rng.random_bool(self.write_ratio) {
            Op::Write
        } else {
            Op::Read
        };
        (op, self.pick_key(rng))
    }

    fn pick_key<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let n = self.keys.len();
        match &self.chooser {
            Chooser::Uniform => rng.random_range(0..n),
            // Zipf yields ranks 1..=n as floats; rank 1 is `key0`. The
            // clamp guards against a float rounding to n+1.
            Chooser::Zipfian(zipf) => (zipf.sample(rng) as usize).clamp(1, n) - 1,
        }
    }
}

/// The name of key `index`: `key0`, `key1`, …
pub fn key_name(index: usize) -> String {
    format!("key{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn spec(keys: usize, write_ratio: f64, distribution: Distribution) -> WorkloadSpec {
        WorkloadSpec {
            keys,
            write_ratio,
            distribution,
            zipf_exponent: 1.0,
            value_size: 10,
        }
    }

    fn counts(workload: &Workload, draws: usize) -> (usize, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut writes = 0;
        let mut per_key = vec![0; workload.len()];
        for _ in 0..draws {
            let (op, key) = workload.next(&mut rng);
            if op == Op::Write {
                writes += 1;
            }
            per_key[key] += 1;
        }
        (writes, per_key)
    }

    #[test]
    fn write_ratio_is_honoured() {
        for ratio in [0.0, 0.3, 0.5, 1.0] {
            let workload = Workload::new(&spec(100, ratio, Distribution::Uniform)).unwrap();
            let (writes, _) = counts(&workload, 100_000);
            let observed = writes as f64 / 100_000.0;
            assert!(
                (observed - ratio).abs() < 0.01,
                "ratio {ratio}: observed {observed}"
            );
        }
    }

    #[test]
    fn uniform_covers_the_whole_key_range_evenly() {
        let workload = Workload::new(&spec(1000, 0.3, Distribution::Uniform)).unwrap();
        let (_, per_key) = counts(&workload, 200_000);
        // Every key is drawn (200 expected each), none wildly over.
        assert!(per_key.iter().all(|&c| c > 100 && c < 300), "{per_key:?}");
        assert_eq!(workload.key(0), b"key0");
        assert_eq!(workload.key(999), b"key999");
        assert_eq!(workload.value().len(), 10);
    }

    #[test]
    fn zipfian_is_skewed_towards_the_first_keys_and_stays_in_range() {
        let workload = Workload::new(&spec(1000, 0.3, Distribution::Zipfian)).unwrap();
        let (_, per_key) = counts(&workload, 200_000);
        assert_eq!(per_key.len(), 1000);
        // With s = 1 and n = 1000, P(key0) = 1 / H(1000) ≈ 0.134 and the
        // first 10 keys take about 39 %; uniform would give 0.1 % and 1 %.
        let first = per_key[0] as f64 / 200_000.0;
        assert!((first - 0.134).abs() < 0.01, "P(key0) = {first}");
        let top10: usize = per_key[..10].iter().sum();
        assert!(top10 as f64 / 200_000.0 > 0.35);
        assert!(per_key[0] > per_key[1] && per_key[1] > per_key[9]);
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(Workload::new(&spec(0, 0.3, Distribution::Uniform)).is_err());
        assert!(Workload::new(&spec(10, 1.5, Distribution::Uniform)).is_err());
        assert!(Workload::new(&spec(10, -0.1, Distribution::Uniform)).is_err());
        let mut bad_zipf = spec(10, 0.3, Distribution::Zipfian);
        bad_zipf.zipf_exponent = 0.0;
        assert!(Workload::new(&bad_zipf).is_err());
        assert!(Workload::new(&spec(1, 1.0, Distribution::Zipfian)).is_ok());
    }
}
