-- List every pod across namespaces and print name, phase and node, as `kubectl get pods
-- -A -o wide` would show them, page by page (constant memory).
-- usage: vqlua bench/kube_list.lua KUBECONFIG [PAGE_SIZE]
local kube = require "vq.kube"
local k = assert(kube.connect { kubeconfig = arg[1] })
local out, n = {}, 0
local iter, state = k:each("pods", { all_namespaces = true, page_size = tonumber(arg[2] or "500") })
for pod in iter do
  n = n + 1
  out[#out + 1] = ("%s\t%s\t%s\t%s\n"):format(pod.metadata.namespace, pod.metadata.name,
    pod.status and pod.status.phase or "", pod.spec and pod.spec.nodeName or "")
  if #out == 500 then io.write(table.concat(out)) out = {} end
end
io.write(table.concat(out))
assert(not state.err, state.err and state.err.message)
io.stderr:write(("%d pods\n"):format(n))
