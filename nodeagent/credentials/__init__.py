"""Registry credentials, found the way kubelet finds them.

keyring.py          the Keyring port, kubelet's registry patterns, ChainKeyring
dockerconfig.py     docker config files and image pull secrets (dockerconfigjson)
provider_config.py  kubelet's CredentialProviderConfig
provider.py         credential provider exec plugins (e.g. ECR's), cached as kubelet does
options.py          CredentialOptions and build_keyring: the one rule every command uses
commands.py         the credential flags shared by `prewarm`, `snapshot build`, `agent`

Used by prewarm (image pulls), kube/secrets.py (the agent's pull secrets) and any other
concern that fetches from registries. Secrets stay inside AuthConfig (masked repr);
errors name the file, key, plugin or image, never a secret.
"""
