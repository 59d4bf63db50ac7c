//! The definitions of the two policy kinds. Their Rust types live in `sluice_model::policy`
//! (the engine, the manifest checks and the local store read them there, with their own wire
//! form), so the definition is assembled here around the schema generated from `PolicySpec`,
//! by the same generator settings kube's derive uses for the other kinds.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource;
use serde_json::json;
use sluice_model::policy::{PolicySpec, SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};

use super::CrdError;

/// Both policy definitions.
pub fn definitions() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    Ok(vec![
        definition::<SluiceNetworkPolicy>(
            "Namespaced",
            "snp",
            "SluiceNetworkPolicy: allow and deny rules for the endpoints of one namespace.",
        )?,
        definition::<SluiceClusterwideNetworkPolicy>(
            "Cluster",
            "sccnp",
            "SluiceClusterwideNetworkPolicy: allow and deny rules for endpoints of any namespace.",
        )?,
    ])
}

fn definition<K: Resource>(scope: &str, short: &str, description: &str) -> Result<CustomResourceDefinition, CrdError> {
    let generator = schemars::gen::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_visitor(kube::core::schema::StructuralSchemaRewriter)
        .into_generator();
    let spec = generator.into_root_schema_for::<PolicySpec>();
    let spec = serde_json::to_value(&spec).map_err(|source| CrdError::Schema { kind: K::KIND, source })?;
    let root = json!({
        "description": description,
        "type": "object",
        "required": ["spec"],
        "properties": { "spec": spec },
    });
    let schema: JSONSchemaProps = serde_json::from_value(root).map_err(|source| CrdError::Schema { kind: K::KIND, source })?;
    let plural = K::URL_PATH_SEGMENT;
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta { name: Some(format!("{plural}.{}", K::GROUP)), ..Default::default() },
        spec: CustomResourceDefinitionSpec {
            group: K::GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: K::KIND.into(),
                list_kind: Some(format!("{}List", K::KIND)),
                plural: plural.into(),
                singular: Some(K::KIND.to_lowercase()),
                short_names: Some(vec![short.into()]),
                categories: Some(vec!["sluice".into()]),
            },
            scope: scope.into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: K::VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema) }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    })
}
