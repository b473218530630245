"""An offline stand-in for the google and random Terraform providers (schema only).

``schema_extract`` turns the provider schema carried by the prebuilt CDKTF provider packages on
PyPI into Terraform's ``providers schema -json`` shape; ``plugin`` serves it over the plugin
protocol (tfplugin6) so the real ``terraform`` binary can ``init``, ``validate`` and ``plan``
without a provider registry; ``mirror`` builds the filesystem mirror and CLI config for it.
"""
