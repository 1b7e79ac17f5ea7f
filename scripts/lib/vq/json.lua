-- json: cJSON under a Lua API (see bindings/json.c).
return require "vq.core.json"
