//! `make api-reference`: writes `docs/reference/api.md` from the CRDs in `crds/`
//! ([`audit_tests::api_reference`] says what it holds).

fn main() -> anyhow::Result<()> {
    audit_tests::api_reference::write()?;
    println!("wrote {}", audit_tests::api_reference::PATH);
    Ok(())
}
