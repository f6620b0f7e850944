// A link to a conversation (/agent#conversation-N, e.g. from an SLA escalation email) that
// led here keeps its target through the sign-in: the fragment never reaches the server.
const match = /^#conversation-(\d{1,12})$/.exec(location.hash);
if (match) document.getElementById("conversation-link").value = match[1];
