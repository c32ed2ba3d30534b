"""The only package that talks to the Kubernetes API (STYLE.md: only one module does).

- `resources`: every resource the operator uses, with its verbs (RBAC is derived from it).
- `config`: where the API server is (in-cluster or kubeconfig).
- `client`: the async client (get/list/create/patch/patch_status/delete/apply_child/post_event).
"""
