"""The nodeagent.io/v1alpha1 API: the custom resources users write, and their one owner.

group.py               the group, its version and its kinds (names, plural, short names)
validation.py          the field-path problem reporter every kind's checker builds on
documents.py           reading documents from YAML/JSON files and directories
selector.py            Kubernetes LabelSelector (the kinds' nodeSelector)
hotimageset.py         HotImageSet: model, parser, loading from files
hotimageset_schema.py  HotImageSet's OpenAPI schema and printer columns
hotmodelset.py         HotModelSet: model, parser, loading from files
model_source.py        a model's source URL (s3://, oci://): parsing and its problems
hotmodelset_schema.py  HotModelSet's OpenAPI schema and printer columns
crd.py                 the CustomResourceDefinitions (daemonset/crd.yaml)

Pure: no Kubernetes client here (kube/ turns a kind into a lightkube resource), no
decision about what to do with the objects (prewarm/desired.py merges the HotImageSets
that apply to a node, models/desired.py the HotModelSets).
"""
