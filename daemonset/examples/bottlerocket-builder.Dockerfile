# The Bottlerocket snapshot builder: the nodeagent image with an entrypoint for a
# superpowered host container (see bottlerocket-snapshot-builder.toml). Build from the
# repository root after the nodeagent image:
#   docker build -f daemonset/examples/bottlerocket-builder.Dockerfile \
#     -t nodeagent-builder:0.1.0 daemonset/examples
FROM nodeagent:0.1.0
COPY bottlerocket-builder.sh /usr/local/bin/bottlerocket-builder.sh
ENTRYPOINT ["/bin/sh", "/usr/local/bin/bottlerocket-builder.sh"]
