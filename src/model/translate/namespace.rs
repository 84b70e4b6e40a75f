//! `v1 Namespace`: a namespace and its labels, which its pods and services inherit
//! (enrollment, waypoint).

use super::context::{BuildState, Ctx, KindObject};
use crate::model::error::ConfigError;
use crate::model::Namespace;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

impl KindObject for core::Namespace {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError> {
        let labels = self.metadata.labels.clone().unwrap_or_default();
        state.namespaces.insert(
            ctx.name.clone(),
            Namespace {
                name: ctx.name.clone(),
                labels,
            },
        );
        Ok(())
    }
}
