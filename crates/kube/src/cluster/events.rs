//! The agent's events, posted as Kubernetes Events about its Node, so `kubectl describe node`
//! and `kubectl get events` show what the agent did (host routing chosen, a bypassed rule, the
//! guard refusing an install). The agent makes each Event with a name unique on the node; a
//! name already taken is an Event already posted.

use k8s_openapi::api::core::v1::Event;
use kube::api::PostParams;
use kube::Api;

use super::{failed, status, KubeCluster, KubeError};

impl KubeCluster {
    /// Posts `event` (about this node), naming the Node's uid so that it is listed with it.
    pub async fn post_event(&self, event: &Event) -> Result<(), KubeError> {
        let mut event = event.clone();
        if let Some(owner) = self.node_owner.lock().await.as_ref() {
            event.involved_object.uid = Some(owner.uid.clone());
        }
        let namespace = event.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(failed(format!("posting the event {}", event.metadata.name.unwrap_or_default()))(e)),
        }
    }
}
