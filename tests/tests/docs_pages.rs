//! The documentation is current, without any server: the API reference is what the
//! committed CRDs generate.

use audit_tests::api_reference;

#[test]
fn the_api_reference_is_generated_from_the_committed_crds() -> anyhow::Result<()> {
    let generated = api_reference::generate()?;
    let committed = api_reference::committed().unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the CRDs in crds/ it is generated from: run `{}`",
        api_reference::PATH,
        api_reference::COMMAND
    );
    Ok(())
}
