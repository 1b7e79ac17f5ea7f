-- yaml: libyaml under a Lua API (see bindings/yaml.c).
return require "vq.core.yaml"
