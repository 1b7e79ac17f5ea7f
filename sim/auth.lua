-- Authentication and authorization as the simulator does them: the kubeconfig's bearer
-- token (or a client certificate, when TLS is terminated in front by nginx and the
-- subject arrives in X-Remote-User), and scenario rules that deny verbs (403) or expire
-- the token (401). A request with no credentials is served as on the apiserver's old
-- insecure port: kubectl (client-go) never sends a token over plain HTTP, and the
-- simulator listens on loopback only. A wrong or expired token is still refused.
local api_mod = require "sim.api"

local M = {}

function M.install(sim)
  sim.auth = function(req, res)
    local hdr = req.headers.authorization or ""
    local token = hdr:match("^[Bb]earer%s+(.+)$")
    if token and (token == sim.token or (sim.extra_tokens and sim.extra_tokens[token])) then
      if sim.token_expired and sim.token_expired(token) then
        api_mod.send_status(res, 401, "Unauthorized", "Unauthorized")
        return false
      end
      return true
    end
    if req.headers["x-remote-user"] and sim.trust_proxy then return true end
    if not token and sim.anonymous ~= false then return true end
    api_mod.send_status(res, 401, "Unauthorized", "Unauthorized")
    return false
  end
  sim.authorize = function(req, res, r)
    if not sim.denied then return true end
    local verb = ({ GET = (r.name and "get" or (req.query.watch and "watch" or "list")), POST = "create",
                    PUT = "update", PATCH = "patch", DELETE = r.name and "delete" or "deletecollection" })[req.method]
    local attrs = { verb = verb, resource = r.plural, subresource = r.sub, namespace = r.ns, name = r.name, group = r.group }
    if sim.denied(attrs) then
      api_mod.send_status(res, 403, ('%s "%s" is forbidden: User "vqsim-admin" cannot %s resource "%s"%s in API group "%s"%s'):format(
        r.plural, r.name or "", verb, r.plural .. (r.sub and ("/" .. r.sub) or ""), "", r.group,
        r.ns and (' in the namespace "' .. r.ns .. '"') or " at the cluster scope"), "Forbidden",
        { name = r.name, group = r.group, kind = r.plural })
      return false
    end
    return true
  end
end

return M
