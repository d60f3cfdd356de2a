//! `dsm-operator`: placeholder until the operator lands.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("dsm-operator is not built yet")
}
