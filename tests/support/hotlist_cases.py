"""Shared inputs of the HotImageSet file tests (tests/test_hotlist_*.py): a valid
multi-document file, a small valid document, and the table of invalid inputs with the
error each must give (and whether the CRD's OpenAPI schema can express the rule too)."""

import textwrap

D64 = "sha256:" + "ab" * 32

VALID = textwrap.dedent(f"""\
    # two sets and an empty document
    apiVersion: nodeagent.io/v1alpha1
    kind: HotImageSet
    metadata:
      name: base
    spec:
      images:
        - image: registry.k8s.io/pause:3.9
          required: true
        - image: nginx:1.25
    ---
    ---
    apiVersion: nodeagent.io/v1alpha1
    kind: HotImageSet
    metadata: {{name: gpu-training, labels: {{team: ml}}}}
    spec:
      priority: 10
      pin: false
      nodeSelector:
        matchLabels: {{nvidia.com/gpu.present: "true"}}
        matchExpressions:
          - {{key: node.kubernetes.io/instance-type, operator: In, values: [p4d.24xlarge]}}
      imagePullSecrets:
        - {{name: ngc-pull, namespace: ml}}
      images:
        - image: nvcr.io/nvidia/pytorch:24.05-py3
          platform: linux/amd64
        - image: ghcr.io/org/trainer@{D64}
    """)


def write(tmp_path, text, name="hot.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def base_doc():
    return {
        "apiVersion": "nodeagent.io/v1alpha1",
        "kind": "HotImageSet",
        "metadata": {"name": "web"},
        "spec": {"images": [{"image": "nginx:1.25"}, {"image": "redis:7"},
                            {"image": "busybox"}]},
    }


def set_at(doc, path, value):
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


DELETE = object()

# (path to change, new value, field path named in the error, text of the message,
#  whether the CRD's OpenAPI schema can express the rule too)
INVALID = [
    (["spec", "images", 2, "image"], "Busybox:latest", "spec.images[2].image",
     'Invalid value: "Busybox:latest": repository name must be lowercase', False),
    (["spec", "images", 1, "image"], "redis@sha256:123", "spec.images[1].image",
     'Invalid value: "redis@sha256:123": digest', False),
    (["spec", "images", 1, "image"], 7, "spec.images[1].image",
     "must be a string, got integer 7", True),
    (["spec", "images", 0, "image"], DELETE, "spec.images[0].image", "Required value", True),
    (["spec", "images", 0, "platform"], "linux/amd46", "spec.images[0].platform",
     'Invalid value: "linux/amd46": unknown architecture "amd46"', False),
    (["spec", "images", 0, "platform"], "amd64", "spec.images[0].platform",
     'Invalid value: "amd64": must be "os/arch"', True),
    (["spec", "images", 0, "platform"], "linx/amd64", "spec.images[0].platform",
     'unknown operating system "linx"', False),
    (["spec", "images", 0, "required"], "yes", "spec.images[0].required",
     'must be a boolean (true or false), got string "yes"', True),
    (["spec", "images", 0, "pull"], True, "spec.images[0].pull",
     'unknown field "pull" (allowed: image, platform, required)', True),
    (["spec", "images", 1], "redis:7", "spec.images[1]",
     'must be an object like {image: "nginx:1.25"}, got string "redis:7"', True),
    (["spec", "images", 2, "image"], "docker.io/library/nginx:1.25", "spec.images[2].image",
     'Duplicate value: "docker.io/library/nginx:1.25" is already listed as spec.images[0]', False),
    (["spec", "images"], [], "spec.images", "must list at least one image", True),
    (["spec", "images"], "nginx", "spec.images", 'must be a list, got string "nginx"', True),
    (["spec", "images"], DELETE, "spec.images", "Required value", True),
    (["spec", "imagess"], [], "spec.imagess", 'unknown field "imagess"', True),
    (["spec", "pin"], "false", "spec.pin", 'must be a boolean (true or false), got string', True),
    (["spec", "priority"], "high", "spec.priority", 'must be an integer, got string "high"', True),
    (["spec", "priority"], 1.5, "spec.priority", "must be an integer, got number 1.5", True),
    (["spec", "priority"], True, "spec.priority", "must be an integer, got boolean True", True),
    (["spec", "priority"], 2**31, "spec.priority", "32-bit", True),
    (["spec", "nodeSelector"], {"matchLabels": {"gpu": 1}}, "spec.nodeSelector.matchLabels.gpu",
     "label value must be a string, got integer 1", True),
    (["spec", "nodeSelector"], {"matchExpressions": [{"key": "a", "operator": "Exist"}]},
     "spec.nodeSelector.matchExpressions[0].operator", 'Unsupported value: "Exist"', True),
    (["spec", "nodeSelector"], {"gpu": "true"}, "spec.nodeSelector", 'unknown field "gpu"', True),
    (["spec", "imagePullSecrets"], [{"name": "regcred"}], "spec.imagePullSecrets[0].namespace",
     "Required value (HotImageSet is cluster-scoped", True),
    (["spec", "imagePullSecrets"], [{"name": "Reg_Cred", "namespace": "default"}],
     "spec.imagePullSecrets[0].name", 'Invalid value: "Reg_Cred"', True),
    (["spec", "imagePullSecrets"], [{"name": "r", "namespace": "a.b"}],
     "spec.imagePullSecrets[0].namespace", 'Invalid value: "a.b"', True),
    (["spec", "imagePullSecrets"], ["regcred"], "spec.imagePullSecrets[0]",
     'got string "regcred"', True),
    (["spec", "imagePullSecrets"], {"name": "x"}, "spec.imagePullSecrets", "must be a list", True),
    (["spec"], DELETE, "spec", "Required value", True),
    (["spec"], ["nginx"], "spec", "must be an object", True),
    (["apiVersion"], "nodeagent.io/v1", "apiVersion",
     'Unsupported value: "nodeagent.io/v1": must be "nodeagent.io/v1alpha1"', False),
    (["apiVersion"], DELETE, "apiVersion", "Required value", False),
    (["kind"], "ImageCache", "kind", 'Unsupported value: "ImageCache": must be "HotImageSet"',
     False),
    (["metadata", "namespace"], "default", "metadata.namespace", "cluster-scoped", False),
    (["metadata", "nmae"], "x", "metadata.nmae", 'did you mean "name"?', False),
    (["extra"], 1, "extra", 'unknown field "extra"', True),
]
